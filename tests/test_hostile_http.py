"""Hostile clients over HTTP and WebSocket (issue #14): each attack at a small scale, against
the real listener, and the defence it meets. Attackers connect from 127.0.0.2 (all of
127.0.0.0/8 is loopback) so that the fresh viewer, from 127.0.0.1, is another client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling import limits, tls
from signaling.app import create_app
from signaling.config import DEFAULT_TURN_TTL
from signaling.listener import Listener
from signaling.state import Service
from tests.aiortc_viewer import assert_serves_a_viewer
from tests.conftest import LOOPBACK_CONFIG, eventually
from tests.processes import stop_process
from tests.test_server_cli import _free_port, _get_when_listening, _read_until, _run
from webrtc.ice import TurnSecret
from webrtc.sources import TestPatternSource

ATTACKER = "127.0.0.2"
TOKEN = "s3cret-hostile-token"


class Running:
    """A peercam server behind its real listener, for one test."""

    def __init__(self, listener: Listener, service: Service) -> None:
        self.listener = listener
        self.service = service

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.listener.port}{path}"

    @property
    def ws(self) -> str:
        return self.url("/ws", "ws")


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start() -> AsyncIterator[StartServer]:
    listeners: list[Listener] = []

    async def start_server(**overrides: Any) -> Running:
        config = replace(LOOPBACK_CONFIG, host="127.0.0.1", **overrides)
        app = create_app(config, source=TestPatternSource())
        listener = Listener(app, config, port=0)
        await listener.start()
        listeners.append(listener)
        return Running(listener, app[Service.KEY])

    yield start_server
    for listener in listeners:
        await listener.aclose()


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Any:
    """Nothing a client sends may produce a traceback or an ERROR in the server's log."""
    caplog.set_level(logging.INFO)
    yield
    bad = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR or (r.exc_info and r.levelno > logging.DEBUG)
    ]
    assert not bad, [r.getMessage() for r in bad]


async def _connect(port: int, source: str = ATTACKER) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True if the server closes ``sock`` within ``timeout`` (EOF or reset)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            while True:
                if not await loop.sock_recv(sock, 65536):
                    return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _http(port: int, request: bytes, source: str = ATTACKER, timeout: float = 10.0) -> bytes:
    """One raw HTTP exchange: bytes a library would refuse to send."""
    sock = await _connect(port, source)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, request)
        chunks = []
        async with asyncio.timeout(timeout):
            while chunk := await loop.sock_recv(sock, 65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


# 1. Lockout without the token --------------------------------------------------------------


async def test_idle_connections_from_one_client_do_not_lock_out_a_viewer(
    start: StartServer,
) -> None:
    """200 idle connections from one address: it gets its share, the others are served."""
    server = await start(max_per_address=4, token=TOKEN, max_connections=100)
    fds_before = _fds()
    socks = [await _connect(server.listener.port) for _ in range(200)]
    try:
        gate = server.listener.gate
        await eventually(lambda: gate.open + gate.refused >= 200)
        assert gate.open <= 4 + 8
        assert _fds() - fds_before <= 200 + 12 + 20  # ours, its share, a margin
        await assert_serves_a_viewer(server.ws + f"?token={TOKEN}", 5)
    finally:
        for sock in socks:
            sock.close()


async def test_idle_and_half_sent_requests_are_dropped_within_the_header_timeout(
    start: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections that never make a request go away in seconds, and free the total cap."""
    server = await start(max_connections=60, header_timeout=1.0, token=TOKEN)
    port = server.listener.port
    idle = [await _connect(port, f"127.0.0.{3 + n % 50}") for n in range(150)]
    half = await _connect(port, "127.0.0.1")
    loop = asyncio.get_running_loop()
    try:
        gate = server.listener.gate
        await eventually(lambda: gate.open + gate.refused >= 150)
        assert gate.open <= 60
        await loop.sock_sendall(half, b"GET /api/status HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(OSError):
                for n in range(100):
                    await loop.sock_sendall(half, f"X-{n}: y\r\n".encode())
                    await asyncio.sleep(0.2)  # a slowloris' pace, not synchronisation

        trickler = loop.create_task(trickle())
        try:
            assert await _closed_by_server(half, 10)
        finally:
            trickler.cancel()
        assert time.monotonic() - started < 6
        assert all([await _closed_by_server(s, 10) for s in idle[:5]])
        await eventually(lambda: gate.open <= 2)
        await assert_serves_a_viewer(server.ws + f"?token={TOKEN}", 5)
    finally:
        for sock in [*idle, half]:
            sock.close()
    warnings = [r for r in caplog.records if "connections refused" in r.getMessage()]
    assert len(warnings) == 1  # one rate-limited WARNING, not one per refusal


async def test_tls_handshakes_that_never_finish_are_capped_like_any_connection(
    start: StartServer, tmp_path: Path
) -> None:
    """With TLS the gate comes before the handshake: a flood of connections that never say
    hello is held to its share and dropped at the header timeout; HTTPS still works."""
    cert, key = tls.self_signed(tmp_path, ["127.0.0.1"])
    config = replace(
        LOOPBACK_CONFIG, host="127.0.0.1", max_per_address=4, max_connections=100,
        header_timeout=1.0, token=TOKEN,
    )  # fmt: skip
    app = create_app(config, source=TestPatternSource())
    listener = Listener(app, config, port=0, ssl_context=tls.server_context(cert, key))
    await listener.start()
    socks = [await _connect(listener.port) for _ in range(50)]
    try:
        gate = listener.gate
        await eventually(lambda: gate.open + gate.refused >= 50)
        assert gate.open <= 4 + 8
        assert all([await _closed_by_server(s, 10) for s in socks[:3]])  # the deadline
        client = ssl.create_default_context(cafile=str(cert))
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"https://127.0.0.1:{listener.port}/api/status?token={TOKEN}", ssl=client
            ) as r,
        ):
            assert r.status == 200
        await eventually(lambda: gate.open == 0)  # failed handshakes leave nothing counted
    finally:
        for sock in socks:
            sock.close()
        await listener.aclose()


def test_the_connection_cap_stays_below_the_fd_limit() -> None:
    """With a hard limit of 1024, connections and viewers' sockets still fit."""
    budget = limits.connection_budget(1024, 50)
    assert budget + limits.RESERVED_FDS + limits.FDS_PER_VIEWER * 50 <= 1024
    assert limits.connection_budget(256, 100) >= 16
    assert limits.raise_fd_limit() >= 256


def test_clients_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    """One IPv6 host owns a /64: counting exact addresses would give it 2**64 slots."""
    assert limits.client_of("192.0.2.7") == "192.0.2.7"
    assert limits.client_of("2001:db8:1:2:aaaa::1") == limits.client_of("2001:db8:1:2::99")
    assert limits.client_of("2001:db8:1:2::1") != limits.client_of("2001:db8:1:3::1")
    assert limits.client_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert limits.client_of(None) == "?"


# 2 (part). Snapshots -----------------------------------------------------------------------


async def test_snapshots_are_rate_limited_per_client(start: StartServer) -> None:
    """A snapshot flood gets 429s; another client still gets its picture."""
    server = await start(snapshot_rate=5.0)
    statuses: list[int] = []
    connector = aiohttp.TCPConnector(local_addr=(ATTACKER, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(40):
            async with http.get(server.url("/snapshot.jpg")) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert "snapshots" in await r.text()
    assert statuses.count(200) <= 10 + 5
    assert statuses.count(429) >= 20
    async with aiohttp.ClientSession() as http, http.get(server.url("/snapshot.jpg")) as r:
        assert r.status == 200
    assert threading.active_count() < 40


# 5. Work for nobody ------------------------------------------------------------------------


async def test_consumers_that_take_nothing_are_dropped_and_release_their_encoders(
    start: StartServer,
) -> None:
    """MJPEG streams never read and JPEG viewers never acking stop costing an encoder."""
    server = await start(stall_timeout=1.0, max_viewers=50)
    port = server.listener.port
    loop = asyncio.get_running_loop()
    readers = []
    for _ in range(20):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = f"GET /stream.mjpg?quality=60 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        readers.append(sock)
    async with aiohttp.ClientSession() as http:
        silent = [await http.ws_connect(server.ws) for _ in range(5)]
        try:
            for ws in silent:
                assert (await ws.receive_json(timeout=10))["type"] == "config"
                await ws.send_json({"type": "jpeg", "quality": 40})
            for sock in readers:  # each was served: the response began
                async with asyncio.timeout(10):
                    assert (await loop.sock_recv(sock, 16)).startswith(b"HTTP/1.1 200")
            service = server.service
            assert service.jpeg.started  # the encoders ran
            await eventually(
                lambda: service.mjpeg_viewers == 0 and not service.jpeg_streams, timeout=30
            )
            await eventually(lambda: not service.jpeg.running())
            for ws in silent:
                codes = []
                while (msg := await ws.receive(timeout=15)).type == aiohttp.WSMsgType.BINARY:
                    pass
                while msg.type == aiohttp.WSMsgType.TEXT:
                    codes.append(msg.json()["code"])
                    msg = await ws.receive(timeout=15)
                assert codes == ["stalled"]
        finally:
            for ws in silent:
                await ws.close()
            for sock in readers:
                sock.close()
    await assert_serves_a_viewer(server.ws, 5)


# 6. Limits with holes ----------------------------------------------------------------------


async def test_every_long_lived_consumer_counts_against_max_viewers(start: StartServer) -> None:
    """/video and MJPEG take viewer slots too: the limit has no side door."""
    server = await start(max_viewers=3)
    async with aiohttp.ClientSession() as http:
        legacy = [await http.ws_connect(server.url("/video", "ws")) for _ in range(2)]
        mjpeg = await http.get(server.url("/stream.mjpg"))
        try:
            assert mjpeg.status == 200
            async with http.get(server.url("/stream.mjpg")) as extra:
                assert extra.status == 503
            async with http.ws_connect(server.url("/video", "ws")) as ws:
                msg = await ws.receive(timeout=10)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1013)
            async with http.ws_connect(server.ws) as ws:
                assert (await ws.receive_json(timeout=10))["code"] == "too-many-viewers"
        finally:
            mjpeg.close()
            for ws in legacy:
                await ws.close()
        await eventually(lambda: not server.service.connections)
        async with http.ws_connect(server.ws) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "config"


@pytest.mark.parametrize("path", ["/ws", "/video"])
async def test_floods_of_messages_and_pings_are_rate_limited(start: StartServer, path: str) -> None:
    """Every frame a client sends counts, pings included; a flood ends in a policy close."""
    server = await start()
    async with aiohttp.ClientSession() as http:
        for flood in ("ping", "text"):
            async with http.ws_connect(server.url(path, "ws"), autoping=False) as ws:
                for _ in range(1000):
                    if flood == "ping":
                        await ws.ping(b"x")
                    else:
                        await ws.send_str("next")
                pongs = 0
                async with asyncio.timeout(20):
                    while (msg := await ws.receive()).type not in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSED,
                    ):
                        pongs += msg.type == aiohttp.WSMsgType.PONG
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008), (flood, msg)
                assert pongs <= 250, pongs  # the burst, not the flood
    await assert_serves_a_viewer(server.ws, 5)


async def test_a_websocket_that_asks_for_nothing_is_closed_with_a_typed_error(
    start: StartServer,
) -> None:
    """An idle socket holds a viewer slot: it is closed after --idle-timeout, saying why."""
    server = await start(idle_timeout=1.0)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "config"
            error = await ws.receive_json(timeout=10)
            assert (error["type"], error["code"]) == ("error", "idle-timeout")
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
        async with http.ws_connect(server.url("/video", "ws")) as ws:
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1008)
        await eventually(lambda: not server.service.connections)


# 7. --no-auth and DNS rebinding ------------------------------------------------------------


async def test_without_auth_only_loopback_host_names_are_served(start: StartServer) -> None:
    """A rebinding page (Host: attacker.example) gets nothing from an open camera."""
    server = await start(token=None, allow_hosts=("camera.lan",))
    port = server.listener.port
    async with aiohttp.ClientSession() as http:
        for path in ("/snapshot.jpg", "/stream.mjpg", "/api/status", "/", "/ws"):
            headers = {"Host": f"attacker.example:{port}"}
            async with http.get(server.url(path), headers=headers) as r:
                assert r.status == 421, path
                assert "--allow-host" in await r.text()
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "camera.lan"):
            async with http.get(server.url("/api/status"), headers={"Host": host}) as r:
                assert r.status == 200, host
        # WebSockets are upgraded and closed with a reason the page can show.
        async with http.ws_connect(server.ws, headers={"Host": f"attacker.example:{port}"}) as ws:
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4421)
            assert "--allow-host" in (msg.extra or "")
        async with http.ws_connect(server.ws, origin=f"http://attacker.example:{port}") as ws:
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4403)


# 8. Secrets and errors ---------------------------------------------------------------------


async def test_tokens_never_reach_the_log(
    start: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Logs are shared and kept; the token in a URL must not be written to them."""
    server = await start(token=TOKEN)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        for path in ("/", "/snapshot.jpg", "/api/status"):
            async with http.get(server.url(path), params={"token": TOKEN}) as r:
                assert r.status == 200
    assert any("token=***" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    "header",
    [b"Authorization: Bearer \xff\xfe\r\n", b"Cookie: peercam_token=\xff\xfe\r\n", b""],
)
async def test_hostile_credentials_and_numbers_get_a_clean_4xx(
    start: StartServer, header: bytes
) -> None:
    """Bytes that are not UTF-8 and numbers of 5,000 digits: a 4xx, never a 500."""
    server = await start(token=TOKEN)
    query = b"" if header else f"?token={TOKEN}&quality={'9' * 5000}".encode()
    request = b"GET /snapshot.jpg" + query + b" HTTP/1.1\r\nHost: x\r\n" + header
    reply = await _http(server.listener.port, request + b"Connection: close\r\n\r\n")
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:200]


async def test_turn_credentials_live_minutes_and_the_token_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Minted TURN passwords expire within minutes; PEERCAM_TOKEN still sets the token, and
    the start-up line is the one place it is printed."""
    assert DEFAULT_TURN_TTL <= 15 * 60
    monkeypatch.setenv("PEERCAM_TOKEN", TOKEN)
    port = _free_port()
    process = await _run("--source", "test", "--port", str(port), "--ice-address", "127.0.0.1")
    try:
        log = await _read_until(process, f"open http://127.0.0.1:{port}/?token={TOKEN}")
        async with aiohttp.ClientSession() as http:
            status = await _get_when_listening(
                http, f"http://127.0.0.1:{port}/api/status?token={TOKEN}"
            )
            assert '"source"' in status
        assert await stop_process(process) == 0
        assert process.stdout is not None
        log += (await process.stdout.read()).decode()
        assert all("open http" in line for line in log.splitlines() if TOKEN in line), log
    finally:
        await stop_process(process)


async def test_turn_credentials_are_minted_at_a_bounded_rate_per_client(
    start: StartServer,
) -> None:
    """Each /ws session mints TURN credentials: a client cannot mint them without end."""
    secret = TurnSecret(("turn:127.0.0.1:3478",), "x" * 12, 600)
    server = await start(turn_secret=secret)
    connector = aiohttp.TCPConnector(local_addr=(ATTACKER, 0))
    codes: list[str] = []
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(40):
            async with http.ws_connect(server.ws) as ws:
                reply = await ws.receive_json(timeout=10)
                codes.append(reply.get("code", reply["type"]))
    assert codes.count("config") <= limits.TURN_MINT_BURST + 5
    assert "rate-limited" in codes
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws) as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "config"
