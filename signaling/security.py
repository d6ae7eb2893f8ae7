"""Access control: a token on every media and signaling endpoint, origin checks, CORS, caps.

The token travels as ``?token=`` (the URL printed at start, VLC, scripts), as the
``peercam_token`` cookie (the page: set from the URL once, HttpOnly, SameSite=Strict, and the
token is then stripped from the address bar), or as ``Authorization: Bearer``. Comparisons are
constant-time. Static files (the page's code) need no token; everything that shows the camera
or talks signaling does.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from . import limits, messages
from .state import Service

logger = logging.getLogger(__name__)

COOKIE = "peercam_token"
COOKIE_MAX_AGE = 30 * 24 * 3600
PUBLIC_PREFIXES = ("/static/",)
PAGES = ("/", "/capture", "/check")
WEBSOCKETS = ("/ws", "/video")
#: Endpoints that hold a connection open: counted against --max-viewers and, per client,
#: --max-per-address.
LONG_LIVED = ("/ws", "/video", "/stream.mjpg")
UNAUTHORIZED_CLOSE = 4401  # an application close code: "unauthorized"

#: Refusals of requests without a token or from a foreign origin: one INFO line per this many
#: seconds at most (the others at DEBUG).
ACCESS_LOG_INTERVAL = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class ClientLimits:
    """Per-client rate limits of the HTTP endpoints, and one quiet warning for all refusals.

    Refusals are logged at DEBUG one by one and as one rate-limited WARNING: a client that
    hits a limit thousands of times must not flood the log.
    """

    KEY: web.AppKey[ClientLimits]

    def __init__(self, snapshot_rate: float) -> None:
        self.snapshot_rate = snapshot_rate
        self.snapshots = limits.ClientBuckets(snapshot_rate, 2 * snapshot_rate)
        self.turn_credentials = limits.ClientBuckets(limits.TURN_MINT_RATE, limits.TURN_MINT_BURST)
        self._warning = limits.QuietWarning(logger)
        # No token, a foreign origin: ordinary mistakes, logged at INFO, but at most one line
        # per ACCESS_LOG_INTERVAL whatever a client sends.
        self._access = limits.QuietWarning(logger, ACCESS_LOG_INTERVAL, logging.INFO)

    def access_refused(self, message: str, *args: object) -> None:
        logger.debug(message, *args)
        self._access.warn(message, *args)

    def refused(self, path: str, client: str, why: str) -> None:
        logger.debug("refused %s from %s: %s", path, client, why)
        self._warning.warn("refusing requests at a limit: %s (%s from %s)", why, path, client)


ClientLimits.KEY = web.AppKey("peercam_client_limits", ClientLimits)


def generate_token() -> str:
    return secrets.token_urlsafe(18)


def _given_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return request.query.get("token") or request.cookies.get(COOKIE)


def token_is_valid(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    try:
        given_bytes = given.encode()
    except UnicodeEncodeError:  # bytes that were not UTF-8 in a header or cookie
        return False
    return hmac.compare_digest(given_bytes, expected.encode())


def _host_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """With access control off: is the Host header a loopback name or an ``--allow-host``?

    A DNS-rebinding page reaches the port under its own name (``attacker.example:9000``);
    refusing names we do not know is what keeps it out. The port is the listening socket's,
    never the header's.
    """
    host = request.headers.get("Host", "").strip().lower()
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not host or not sockname:
        return False
    port = int(sockname[1])
    names = (*LOOPBACK_NAMES, *allowed)
    if host in (f"{name}:{port}" for name in names):
        return True
    default_port = 443 if request.secure else 80
    return (host in names and port == default_port) or host in allowed


async def _refuse_at_limit(
    request: web.Request,
    *,
    reason: str,
    close_code: int,
    status: type[web.HTTPException],
    error_code: str | None = None,
) -> web.StreamResponse:
    """Refuse a long-lived consumer: a close frame (after a typed error on /ws), else HTTP."""
    if request.path not in WEBSOCKETS:
        raise status(text=reason + "\n", headers={"Retry-After": "5"})
    ws = web.WebSocketResponse(max_msg_size=1024)
    await ws.prepare(request)
    if error_code is not None and request.path == "/ws":
        await ws.send_str(messages.error_message(error_code, reason))
    await ws.close(code=close_code, message=reason.encode()[:120])
    return ws


def _origin_of(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}".lower()


def _allowed_origin(request: web.Request, allowed: tuple[str, ...]) -> str | None:
    """The request's Origin if it may use this server (same origin or allowed), else None."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    normalized = origin.rstrip("/").lower()
    if normalized == _origin_of(request) or normalized in allowed:
        return origin
    return None


async def _refuse_websocket(request: web.Request, code: int, reason: str) -> web.StreamResponse:
    # Browsers hide an HTTP status from a failed WebSocket handshake; a close frame with a
    # reason is what the page can show. Nothing else is read from this socket.
    ws = web.WebSocketResponse(max_msg_size=1024)
    await ws.prepare(request)
    await ws.close(code=code, message=reason.encode()[:120])
    return ws


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    service = request.app[Service.KEY]
    config = service.config
    path = request.path
    if config.token is None and not _host_allowed(request, config.allow_hosts):
        logger.debug("refused %s for Host %r", path, request.headers.get("Host"))
        raise web.HTTPMisdirectedRequest(
            text="peercam without access control answers only to 127.0.0.1, localhost and "
            "[::1] (this protects it from DNS rebinding); start it with --allow-host NAME "
            "to be reached as NAME\n"
        )
    if path.startswith(PUBLIC_PREFIXES):
        return await handler(request)

    websocket = path in WEBSOCKETS
    if (
        websocket
        and "Origin" in request.headers
        and _allowed_origin(request, config.allow_origins) is None
    ):
        request.app[ClientLimits.KEY].access_refused(
            "refused %s from origin %s", path, request.headers["Origin"]
        )
        raise web.HTTPForbidden(text="this origin may not use peercam (see --allow-origin)\n")

    if config.token is not None:
        given = _given_token(request)
        if not token_is_valid(given, config.token):
            request.app[ClientLimits.KEY].access_refused(
                "refused %s %s from %s: no valid token", request.method, path, request.remote
            )
            message = "unauthorized: open the URL with ?token= printed in peercam's log"
            if websocket:
                return await _refuse_websocket(request, UNAUTHORIZED_CLOSE, message)
            raise web.HTTPUnauthorized(
                text=message + "\n", headers={"WWW-Authenticate": 'Bearer realm="peercam"'}
            )
        if path in PAGES and "token" in request.query and request.method == "GET":
            # Keep the token in an HttpOnly cookie and out of the address bar and history.
            query = {k: v for k, v in request.query.items() if k != "token"}
            location = request.rel_url.with_query(query)
            response = web.HTTPSeeOther(location=str(location))
            response.set_cookie(
                COOKIE, config.token, max_age=COOKIE_MAX_AGE, httponly=True,
                samesite="Strict", secure=request.secure, path="/",
            )  # fmt: skip
            raise response

    client = limits.client_of(request.remote)
    client_limits = request.app[ClientLimits.KEY]
    if path == "/snapshot.jpg" and not client_limits.snapshots.allow(client):
        client_limits.refused(path, client, "snapshot rate")
        raise web.HTTPTooManyRequests(
            text=f"too many snapshots: at most {client_limits.snapshot_rate:g} per second\n",
            headers={"Retry-After": "1"},
        )
    if path not in LONG_LIVED:
        return await handler(request)
    # One limit for every long-lived consumer (/ws, /video, MJPEG), counted per client.
    if service.connections[client] >= config.max_per_address:
        client_limits.refused(path, client, "connections per client")
        return await _refuse_at_limit(
            request,
            reason=f"too many connections from {client} (at most {config.max_per_address})",
            close_code=1008,  # policy violation
            status=web.HTTPTooManyRequests,
        )
    if service.connections.total() >= config.max_viewers:
        client_limits.refused(path, client, "viewers")
        return await _refuse_at_limit(
            request,
            reason=f"this server serves at most {config.max_viewers} viewers",
            close_code=1013,  # try again later
            status=web.HTTPServiceUnavailable,
            error_code="too-many-viewers",
        )
    if (
        path == "/ws"
        and config.turn_secret is not None
        and not client_limits.turn_credentials.allow(client)
    ):
        # Each session mints TURN credentials (they go out in its first message).
        client_limits.refused(path, client, "TURN credentials")
        return await _refuse_at_limit(
            request,
            reason="too many new sessions: try again in a few seconds",
            close_code=1008,
            status=web.HTTPTooManyRequests,
            error_code="rate-limited",
        )
    service.connections[client] += 1
    try:
        return await handler(request)
    finally:
        service.connections[client] -= 1
        if service.connections[client] <= 0:
            del service.connections[client]


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: CORS for the HTTP endpoints, for allowed origins only.

    A signal rather than the middleware, so streamed responses (MJPEG) get the headers too.
    """
    origin = request.headers.get("Origin")
    allowed = request.app[Service.KEY].config.allow_origins
    if origin and origin.rstrip("/").lower() in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"


def normalize_host(name: str) -> str:
    """``--allow-host`` value → ``host`` or ``host:port`` in lower case.

    Raises:
        ValueError: not a host name (a scheme, a path or a space in it).
    """
    host = name.strip().lower()
    parts = urlsplit(f"//{host}")
    if not host or parts.netloc != host or "@" in host or " " in host:
        raise ValueError(f"--allow-host {name!r}: give a host name, e.g. camera.lan[:9000]")
    return host


def normalize_origin(url: str) -> str:
    """``--allow-origin`` value → ``scheme://host[:port]`` in lower case.

    Raises:
        ValueError: not an http(s) origin.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(
            f"--allow-origin {url!r}: give scheme://host[:port], e.g. https://example.org"
        )
    return f"{parts.scheme}://{parts.netloc}".lower()
