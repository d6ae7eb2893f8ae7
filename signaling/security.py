"""Access control: a token on every media and signaling endpoint, origin checks, CORS, caps.

The token travels as ``?token=`` (the URL printed at start, VLC, scripts), as the
``peercam_token`` cookie (the page: set from the URL once, HttpOnly, SameSite=Strict, and the
token is then stripped from the address bar), or as ``Authorization: Bearer``. Comparisons are
constant-time. Static files (the page's code) need no token; everything that shows the camera
or talks signaling does.

Behind a ``--trusted-proxy`` every check here sees the request as the client made it
(:func:`proxy.client_view`, computed once per request): the middleware hands the handlers a
clone whose ``remote``, ``scheme`` and ``host`` are the forwarded ones.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from . import limits, messages
from .proxy import ClientView, client_view
from .state import Site

logger = logging.getLogger(__name__)

COOKIE = "peercam_token"
COOKIE_MAX_AGE = 30 * 24 * 3600
PUBLIC_PREFIXES = ("/static/",)
#: Served without a token: monitoring probes carry no credentials, and /healthz tells only
#: camera names and whether each delivers (no descriptions, URLs or errors).
PUBLIC_PATHS = ("/healthz",)
#: A camera's routes: /cam/NAME/ws is checked as /ws, /cam/NAME/ as the page /.
CAMERA_PREFIX = re.compile(r"/cam/[a-z0-9][a-z0-9_-]*(?=/)")
PAGES = ("/", "/capture", "/check")
WEBSOCKETS = ("/ws", "/video")
#: Endpoints that hold a connection open: counted against --max-viewers and, per client,
#: --max-per-address.
LONG_LIVED = ("/ws", "/video", "/stream.mjpg")
# Application close codes (4000-4999) after a refused WebSocket upgrade, named after the HTTP
# status a plain request gets: the page can read a close code and reason, never a status.
UNAUTHORIZED_CLOSE = 4401  # no valid token
FORBIDDEN_ORIGIN_CLOSE = 4403  # a page from another origin
MISDIRECTED_CLOSE = 4421  # --no-auth and a Host name this server does not answer to
#: A close reason is at most 123 bytes of UTF-8 (RFC 6455: 125 with the code).
MAX_CLOSE_REASON = 123

#: The request as its client made it, set once per request by the middleware.
CLIENT_VIEW: web.RequestKey[ClientView] = web.RequestKey("peercam_client_view", ClientView)

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

    def __init__(self, snapshot_rate: float, cameras: int = 1) -> None:
        self.snapshot_rate = snapshot_rate
        self.snapshots = limits.ClientBuckets(snapshot_rate, 2 * snapshot_rate)
        # A wall asks each camera for a tile about twice a second; four times that (or the
        # snapshot rate, if higher) is allowed per camera.
        self.tile_rate = max(TILE_RATE_PER_CAMERA, snapshot_rate) * cameras
        self.tiles = limits.ClientBuckets(self.tile_rate, 2 * self.tile_rate)
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

TILE_RATE_PER_CAMERA = 8.0


def route_path(path: str) -> str:
    """The path within its camera: ``/cam/yard/ws`` → ``/ws``; others unchanged."""
    match = CAMERA_PREFIX.match(path)
    return path[match.end() :] if match else path


def generate_token() -> str:
    return secrets.token_urlsafe(18)


def _given_token(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":  # auth schemes are case-insensitive (RFC 9110 §11.1)
        return credentials.strip()
    return request.query.get("token") or request.cookies.get(COOKIE)


def token_is_valid(given: str | None, expected: str) -> bool:
    if given is None:
        return False
    try:
        given_bytes = given.encode()
    except UnicodeEncodeError:  # bytes that were not UTF-8 in a header or cookie
        return False
    return hmac.compare_digest(given_bytes, expected.encode())


def close_reason(text: str) -> bytes:
    """``text`` cut to what a close frame carries, never in the middle of a UTF-8 character
    (a browser fails the whole close, 1006 and no reason, on invalid UTF-8)."""
    return text.encode()[:MAX_CLOSE_REASON].decode(errors="ignore").encode()


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _host_name(host: str) -> str:
    """``host[:port]`` → ``host`` (``[::1]:8443`` → ``[::1]``)."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _host_allowed(request: web.Request, view: ClientView, allowed: tuple[str, ...]) -> bool:
    """With access control off: is the Host a loopback name or an ``--allow-host``?

    A DNS-rebinding page reaches the port under its own name (``attacker.example:9000``);
    refusing names we do not know is what keeps it out. Directly, the port is the listening
    socket's, never the header's; through a trusted proxy it is the proxy's, which this server
    cannot know: the forwarded name decides.
    """
    host = view.host.strip().lower()
    names = (*LOOPBACK_NAMES, *allowed)
    if view.proxy is not None:
        return bool(host) and (host in allowed or _host_name(host) in names)
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not host or not sockname:
        return False
    port = int(sockname[1])
    if host in (f"{name}:{port}" for name in names):
        return True
    default_port = 443 if request.secure else 80
    return (host in names and port == default_port) or host in allowed


async def _refuse_at_limit(
    request: web.Request,
    path: str,
    *,
    reason: str,
    close_code: int,
    status: type[web.HTTPException],
    error_code: str | None = None,
) -> web.StreamResponse:
    """Refuse a long-lived consumer: a close frame (after a typed error on /ws), else HTTP."""
    if path not in WEBSOCKETS:
        raise status(text=reason + "\n", headers={"Retry-After": "5"})
    ws = web.WebSocketResponse(max_msg_size=1024)
    await ws.prepare(request)
    if error_code is not None and path == "/ws":
        await ws.send_str(messages.error_message(error_code, reason))
    await ws.close(code=close_code, message=close_reason(reason))
    return ws


def _origin_allowed(origin: str, view: ClientView, allowed: tuple[str, ...]) -> bool:
    """May a page from ``origin`` use this server (the same origin, or allowed)?"""
    normalized = origin.rstrip("/").lower()
    return normalized == view.origin or normalized in allowed


async def _refuse(
    request: web.Request,
    path: str,
    status: type[web.HTTPException],
    code: int,
    reason: str,
    *,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Refuse ``request``: a WebSocket upgrade is completed and closed with ``code`` and
    ``reason``, anything else gets ``status`` with ``detail`` (else ``reason``).

    Browsers hide the HTTP status of a failed WebSocket handshake; a close frame with a reason
    is what the page can show. Nothing is sent on the socket before the close, nothing read.
    """
    if path in WEBSOCKETS:
        ws = web.WebSocketResponse(max_msg_size=1024)
        if ws.can_prepare(request).ok:
            await ws.prepare(request)
            await ws.close(code=code, message=close_reason(reason))
            return ws
    raise status(text=(detail or reason) + "\n", headers=headers)


def _relative_location(request: web.Request) -> str:
    """The page's own URL without ``token=``, relative (``./?codec=h264``, ``check``), so the
    redirect stays under whatever prefix a proxy serves peercam at."""
    query = [(k, v) for k, v in request.query.items() if k != "token"]
    name = request.path.rsplit("/", 1)[-1] or "./"
    return name + (f"?{urlencode(query)}" if query else "")


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The root's Site whichever camera the request is for: the caps count across cameras.
    site = request.config_dict[Site.KEY]
    config = site.config
    view = client_view(
        request.remote,
        request.scheme,
        request.headers.get("Host", ""),
        request.headers,
        config.trusted_proxies,
    )
    request[CLIENT_VIEW] = view  # before the clone, so the access log sees it too
    if view.proxy is not None:
        request = request.clone(remote=view.address, scheme=view.scheme, host=view.host)
    path = route_path(request.path)
    client_limits = request.config_dict[ClientLimits.KEY]
    if config.token is None and not _host_allowed(request, view, config.allow_hosts):
        logger.debug("refused %s for Host %r from %s", path, view.host, view.describe())
        return await _refuse(
            request,
            path,
            web.HTTPMisdirectedRequest,
            MISDIRECTED_CLOSE,
            f"Host {_clip(view.host, 40)} is not served without a token: see --allow-host, "
            "--trusted-proxy",
            detail="peercam without access control answers only to 127.0.0.1, localhost and "
            "[::1] (this protects it from DNS rebinding); start it with --allow-host NAME "
            "to be reached as NAME (behind a reverse proxy: --trusted-proxy ADDRESS)",
        )
    if path.startswith(PUBLIC_PREFIXES) or request.path in PUBLIC_PATHS:
        return await handler(request)
    if request.method == "OPTIONS":
        # A CORS preflight never carries credentials (Fetch standard), so it cannot need the
        # token. Only WHEP answers OPTIONS (methods and headers, nothing of the camera); every
        # other route says 405.
        return await handler(request)

    websocket = path in WEBSOCKETS
    origin = request.headers.get("Origin")
    if websocket and origin is not None and not _origin_allowed(origin, view, config.allow_origins):
        client_limits.access_refused(
            "refused %s from origin %s (this server is %s) from %s",
            path, origin, view.origin, view.describe(),
        )  # fmt: skip
        return await _refuse(
            request,
            path,
            web.HTTPForbidden,
            FORBIDDEN_ORIGIN_CLOSE,
            f"origin {_clip(origin, 36)} is not {_clip(view.origin, 36)}: see --allow-origin, "
            "--trusted-proxy",
            detail=f"a page from {origin} may not use this server ({view.origin}): allow it "
            "with --allow-origin; behind a reverse proxy, name it with --trusted-proxy",
        )

    if config.token is not None:
        given = _given_token(request)
        if not token_is_valid(given, config.token):
            client_limits.access_refused(
                "refused %s %s from %s: no valid token", request.method, path, view.describe()
            )
            return await _refuse(
                request,
                path,
                web.HTTPUnauthorized,
                UNAUTHORIZED_CLOSE,
                "unauthorized: open the URL with ?token= printed in peercam's log",
                headers={"WWW-Authenticate": 'Bearer realm="peercam"'},
            )
        if path in PAGES and "token" in request.query and request.method == "GET":
            # Keep the token in an HttpOnly cookie and out of the address bar and history.
            response = web.HTTPSeeOther(location=_relative_location(request))
            # No Path: the browser defaults it to the page's directory, so two peercams under
            # /cam1/ and /cam2/ of one proxy keep their own cookies.
            response.set_cookie(
                COOKIE, config.token, max_age=COOKIE_MAX_AGE, httponly=True,
                samesite="Strict", secure=view.scheme == "https", path="",
            )  # fmt: skip
            raise response

    client = limits.client_of(view.address)
    if path == "/snapshot.jpg" and not client_limits.snapshots.allow(client):
        client_limits.refused(path, client, "snapshot rate")
        raise web.HTTPTooManyRequests(
            text=f"too many snapshots: at most {client_limits.snapshot_rate:g} per second\n",
            headers={"Retry-After": "1"},
        )
    if path == "/tile.jpg" and not client_limits.tiles.allow(client):
        client_limits.refused(path, client, "tile rate")
        raise web.HTTPTooManyRequests(
            text=f"too many tiles: at most {client_limits.tile_rate:g} per second\n",
            headers={"Retry-After": "1"},
        )
    if path not in LONG_LIVED:
        return await handler(request)
    # One limit for every long-lived consumer (/ws, /video, MJPEG), counted per client.
    connections = site.connections
    if connections[client] >= config.max_per_address:
        client_limits.refused(path, client, "connections per client")
        return await _refuse_at_limit(
            request,
            path,
            reason=f"too many connections from {client} (at most {config.max_per_address})",
            close_code=1008,  # policy violation
            status=web.HTTPTooManyRequests,
        )
    if connections.total() >= config.max_viewers:
        client_limits.refused(path, client, "viewers")
        return await _refuse_at_limit(
            request,
            path,
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
            path,
            reason="too many new sessions: try again in a few seconds",
            close_code=1008,
            status=web.HTTPTooManyRequests,
            error_code="rate-limited",
        )
    connections[client] += 1
    try:
        return await handler(request)
    finally:
        connections[client] -= 1
        if connections[client] <= 0:
            del connections[client]


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: CORS for the HTTP endpoints (pictures, WHEP), for allowed
    origins only.

    A signal rather than the middleware, so streamed responses (MJPEG) get the headers too.
    """
    origin = request.headers.get("Origin")
    allowed = request.config_dict[Site.KEY].config.allow_origins
    if origin and origin.rstrip("/").lower() in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        # What a WHEP player in another site's page must read from a 201 (signaling/whep.py).
        response.headers["Access-Control-Expose-Headers"] = "Location, ETag, Link, Accept-Patch"
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
