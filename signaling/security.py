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

from .state import Service

logger = logging.getLogger(__name__)

COOKIE = "peercam_token"
COOKIE_MAX_AGE = 30 * 24 * 3600
PUBLIC_PREFIXES = ("/static/",)
PAGES = ("/", "/capture", "/check")
WEBSOCKETS = ("/ws", "/video")
#: Endpoints that hold a connection open: counted against the per-address cap.
LONG_LIVED = ("/ws", "/video", "/stream.mjpg")
UNAUTHORIZED_CLOSE = 4401  # an application close code: "unauthorized"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    return hmac.compare_digest(given.encode(), expected.encode())


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
    if path.startswith(PUBLIC_PREFIXES):
        return await handler(request)

    websocket = path in WEBSOCKETS
    if (
        websocket
        and "Origin" in request.headers
        and _allowed_origin(request, config.allow_origins) is None
    ):
        logger.info("refused %s from origin %s", path, request.headers["Origin"])
        raise web.HTTPForbidden(text="this origin may not use peercam (see --allow-origin)\n")

    if config.token is not None:
        given = _given_token(request)
        if not token_is_valid(given, config.token):
            logger.info(
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

    address = request.remote or "?"
    long_lived = path in LONG_LIVED
    if long_lived:
        if service.connections[address] >= config.max_per_address:
            message = f"too many connections from {address} (at most {config.max_per_address})"
            logger.info("refused %s: %s", path, message)
            if websocket:
                return await _refuse_websocket(request, 1008, message)  # policy violation
            raise web.HTTPTooManyRequests(text=message + "\n")
        service.connections[address] += 1
    try:
        return await handler(request)
    finally:
        if long_lived:
            service.connections[address] -= 1
            if service.connections[address] <= 0:
                del service.connections[address]


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
