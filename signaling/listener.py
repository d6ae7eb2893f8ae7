"""The listening socket: connection caps at accept time, timeouts, a token-free access log.

aiohttp has no hook between ``accept()`` and its HTTP parser, and a connection that is refused
only after parsing (the middleware) has already cost a file descriptor for as long as the
client keeps it. So :class:`Listener` runs its own site: the protocol factory it gives to
``loop.create_server`` is wrapped by :class:`_GatedProtocol`, which counts every connection in
total and per client (:func:`limits.client_of`) in ``connection_made`` and closes the ones over
a cap before aiohttp ever sees a byte. This is the public ``BaseSite``/``runner.server``
interface, so it survives aiohttp upgrades; ``tests/test_hostile_http.py`` pins the behaviour.

Timeouts are aiohttp's own ``keepalive_timeout``: since 3.10 it is armed when a connection
opens and after each response, and closes the connection while no complete request has
arrived — it covers a client that sends nothing, one that idles between requests and one that
trickles its headers. The default of 75 s (``run_app``) becomes ``--header-timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler

from . import limits
from .config import Config
from .proxy import Network, is_trusted
from .security import CLIENT_VIEW

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 2.0
EARLY_DATA_MAX = 64 * 1024
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 30\r\n"
    b"Retry-After: 5\r\nConnection: close\r\n\r\ntoo many connections, retry\r\n\r\n"
)


class AccessLog(AbstractAccessLogger):
    """One line per request, with ``token=`` redacted: tokens never reach the log. The client
    is the forwarded one behind a trusted proxy (``203.0.113.9 via 127.0.0.1``)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        view = request.get(CLIENT_VIEW)
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"',
            request.remote if view is None else view.describe(),
            request.method,
            limits.redact_token(request.path_qs),
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
            request.headers.get("User-Agent", "-"),
        )


class ConnectionGate:
    """Open TCP connections, in total and per client, with their caps.

    A trusted proxy carries every client behind it, and which one a connection is for is
    known only once its request is parsed: its connections are capped by the total alone,
    and the per-client limits apply to the forwarded clients in the security middleware.
    """

    def __init__(self, total: int, per_client: int, trusted: tuple[Network, ...] = ()) -> None:
        self.total = total
        self.per_client = per_client
        self._trusted = trusted
        self.open = 0
        self.refused = 0
        self._clients: dict[str, int] = {}
        self._warning = limits.QuietWarning(logger)

    def admit(self, address: str | None) -> str | None:
        """The client key if this connection may open, else None (and a quiet warning)."""
        client = limits.client_of(address)
        held = self._clients.get(client, 0)
        per_client = self.total if is_trusted(address, self._trusted) else self.per_client
        if self.open >= self.total or held >= per_client:
            self.refused += 1
            which = (
                f"{self.total} in total"
                if self.open >= self.total
                else f"{self.per_client} from {client}"
            )
            self._warning.warn("connections refused: at the cap of %s", which)
            return None
        self._clients[client] = held + 1
        self.open += 1
        return client

    def release(self, client: str) -> None:
        self.open -= 1
        left = self._clients[client] - 1
        if left:
            self._clients[client] = left
        else:
            del self._clients[client]

    def stats(self) -> dict[str, int]:
        return {
            "open": self.open,
            "refused": self.refused,
            "clients": len(self._clients),
            "max": self.total,
            "maxPerClient": self.per_client,
        }


class _GatedProtocol(asyncio.Protocol):
    """Admits a connection through the gate, then hands every event to aiohttp's handler.

    With TLS the gate comes first and the handshake after it (``loop.start_tls`` on the
    admitted connection): had the server socket done TLS itself, connections would reach the
    gate only after their handshake, and a flood of handshakes that never finish would hold
    descriptors uncounted.
    """

    def __init__(self, gate: ConnectionGate, server: web.Server, tls: _Tls | None = None) -> None:
        self._gate = gate
        self._server = server
        self._tls = tls
        self._inner: RequestHandler | None = None
        self._client: str | None = None
        self._handshake: asyncio.Task[None] | None = None
        # What TLS decrypts between the handshake's end and this protocol's task resuming
        # (a request sent at once): kept for the handler, a few KiB at most.
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = self._gate.admit(peer[0] if peer else None)
        if client is None:
            assert isinstance(transport, asyncio.WriteTransport)
            if self._tls is None:
                transport.write(_REFUSED)  # a few bytes into a fresh socket buffer
            transport.close()
            return
        self._client = client
        if self._tls is None:
            self._serve(transport)
            return
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello waits in the socket for start_tls
        self._handshake = asyncio.get_running_loop().create_task(self._start_tls(transport))
        self._tls.handshakes.add(self._handshake)
        self._handshake.add_done_callback(self._tls.handshakes.discard)

    def _serve(self, transport: asyncio.BaseTransport) -> None:
        self._inner = self._server()
        self._inner.connection_made(transport)

    async def _start_tls(self, transport: asyncio.Transport) -> None:
        assert self._tls is not None
        try:
            secure = await asyncio.get_running_loop().start_tls(
                transport, self, self._tls.context, server_side=True,
                ssl_handshake_timeout=self._tls.timeout,
            )  # fmt: skip
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError) as exc:
            # No handshake, no connection: asyncio tells this protocol nothing more.
            logger.debug("TLS handshake failed: %r", exc)
            transport.abort()
            self._release()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if secure is None:
            self._release()
            return
        self._serve(secure)
        early, self._early = self._early, []
        for data in early:
            if self._inner is not None:
                self._inner.data_received(data)

    def _release(self) -> None:
        if self._client is not None:
            self._gate.release(self._client)
            self._client = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        elif self._handshake is not None and sum(map(len, self._early)) < EARLY_DATA_MAX:
            self._early.append(data)

    def eof_received(self) -> None:
        if self._inner is not None:
            self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _Tls:
    """TLS for a gated site: the context, the handshake's deadline, the handshakes under way
    (owned here and cancelled when the site stops)."""

    def __init__(self, context: ssl.SSLContext, timeout: float) -> None:
        self.context = context
        self.timeout = timeout
        self.handshakes: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        for task in list(self.handshakes):
            task.cancel()
        await asyncio.gather(*self.handshakes, return_exceptions=True)


class _GatedSite(web.BaseSite):
    """A TCP site whose connections pass through a :class:`ConnectionGate`."""

    def __init__(
        self,
        runner: web.AppRunner,
        gate: ConnectionGate,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._gate = gate
        self._host = host
        self._port = port
        self._handshake_timeout = handshake_timeout
        self._tls: _Tls | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        gate = self._gate
        # TLS after the gate (see _GatedProtocol): the server socket itself is plain TCP. A
        # handshake must end as quickly as a request's headers must arrive.
        tls = self._tls = (
            _Tls(self._ssl_context, self._handshake_timeout) if self._ssl_context else None
        )
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _GatedProtocol(gate, server, tls),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )

    async def stop(self) -> None:
        if self._tls is not None:
            await self._tls.aclose()
        await super().stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = getattr(self._server, "sockets", ())
        return int(sockets[0].getsockname()[1]) if sockets else self._port


class Listener:
    """Serves ``app`` on ``host:port`` under the connection caps and timeouts of ``config``."""

    def __init__(
        self,
        app: web.Application,
        config: Config,
        *,
        ssl_context: ssl.SSLContext | None = None,
        port: int | None = None,
    ) -> None:
        self._app = app
        self._config = config
        self._ssl_context = ssl_context
        self._port = config.port if port is None else port
        budget = limits.connection_budget(limits.fd_limit(), config.max_viewers)
        wanted = config.max_connections or limits.DEFAULT_MAX_CONNECTIONS
        if wanted > budget:
            logger.warning(
                "at most %d connections (not %d): the file-descriptor limit is %d",
                budget, wanted, limits.fd_limit(),
            )  # fmt: skip
        self.gate = ConnectionGate(
            min(wanted, budget), config.connections_per_client, config.trusted_proxies
        )
        self._runner: web.AppRunner | None = None
        self._site: _GatedSite | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self._app,
            access_log_class=AccessLog,
            keepalive_timeout=self._config.header_timeout,
            # A request body the handler did not read is drained this long, then dropped.
            lingering_time=self._config.header_timeout,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await self._runner.setup()
        self._site = _GatedSite(
            self._runner, self.gate, self._config.host, self._port,
            ssl_context=self._ssl_context, handshake_timeout=self._config.header_timeout,
        )  # fmt: skip
        await self._site.start()

    @property
    def port(self) -> int:
        assert self._site is not None
        return self._site.port

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """At the fd limit asyncio logs an ERROR with a traceback per failed ``accept()``: one
    rate-limited WARNING instead. The caps keep the server below the limit; this is for fds
    taken by something else (files, other processes' share of a system-wide limit)."""
    warning = limits.QuietWarning(logger)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            warning.warn("accept() failed: %s", context.get("exception"))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def serve(
    app: web.Application, config: Config, ssl_context: ssl.SSLContext | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly (what ``web.run_app`` did)."""
    loop = asyncio.get_running_loop()
    _quiet_accept_errors(loop)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    listener = Listener(app, config, ssl_context=ssl_context)
    await listener.start()
    try:
        await stop.wait()
    finally:
        await listener.aclose()
