"""Churn and shutdown: viewers coming and going (some killed) leave nothing behind."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.aiortc_viewer import AiortcViewer
from tests.conftest import ServerFactory, eventually, service_of, ws_url

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    """Resident memory after returning freed heap to the system: glibc otherwise keeps the
    high-water mark of its arenas, which says nothing about leaks."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _kill(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the TCP connection without a closing handshake, as a killed tab does."""
    connection = ws._response.connection  # the raw transport, to abort it
    assert connection is not None
    assert connection.transport is not None
    connection.transport.abort()


async def _webrtc_viewer(server: TestServer, kill: bool) -> None:
    viewer = AiortcViewer(ws_url(server), decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(1, timeout=20)
        if kill and viewer.ws is not None:
            _kill(viewer.ws)
    finally:
        await viewer.close()


async def _jpeg_viewer(server: TestServer, http: aiohttp.ClientSession, kill: bool) -> None:
    ws = await http.ws_connect(ws_url(server))
    try:
        await ws.receive_json(timeout=10)
        await ws.send_json({"type": "jpeg"})
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.BINARY
        if kill:
            _kill(ws)
    finally:
        await ws.close()


async def _churn(server: TestServer, count: int, start: int = 0) -> None:
    async with aiohttp.ClientSession() as http:
        for base in range(start, start + count, 10):
            jobs = []
            for n in range(base, min(base + 10, start + count)):
                kill = n % 3 == 0
                if n % 2:
                    jobs.append(_webrtc_viewer(server, kill))
                else:
                    jobs.append(_jpeg_viewer(server, http, kill))
            await asyncio.gather(*jobs)


@pytest.mark.slow
async def test_two_hundred_viewers_come_and_go_and_leave_nothing_behind(
    make_server: ServerFactory,
) -> None:
    """Months of viewers opening and closing tabs must not leak peers, tasks, fds or memory."""
    server = await make_server(max_per_address=1000)  # every test viewer is 127.0.0.1
    service = service_of(server)
    # Warm up at the same concurrency: imports, codec contexts and allocator arenas settle.
    await _churn(server, 40)

    def idle() -> bool:
        return (len(service.peers) == 0 and len(service.viewers) == 0
                and not service.encoders.running() and not service.jpeg.running())  # fmt: skip

    await eventually(idle, timeout=30)
    gc.collect()
    tasks, fds, rss = len(asyncio.all_tasks()), _fds(), _rss_mb()
    started = time.monotonic()
    await _churn(server, 200, start=40)
    await eventually(idle, timeout=60)
    gc.collect()
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks, timeout=30)
    await eventually(lambda: _fds() <= fds, timeout=30)
    growth = _rss_mb() - rss
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "churn.txt").write_text(
        f"200 viewers (100 WebRTC, 100 JPEG, 67 killed) in {time.monotonic() - started:.1f} s;"
        f" tasks {tasks} -> {len(asyncio.all_tasks())}, fds {fds} -> {_fds()},"
        f" RSS growth {growth:.1f} MB\n"
    )
    assert growth < 20, f"RSS grew {growth:.1f} MB"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_sigterm_with_twenty_viewers_exits_within_three_seconds() -> None:
    """A board is restarted by its service manager: stopping must be quick and clean."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "server.py"), "--source", "test", "--port", str(port),
        "--ice-address", "127.0.0.1", "--no-auth", "--log-level", "WARNING",
        "--max-per-address", "100",
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"ws://127.0.0.1:{port}/ws"
    webrtc = [AiortcViewer(url, decode_bar=False) for _ in range(10)]
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(20):
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/api/status") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)  # not listening yet
            jpeg = [await http.ws_connect(url) for _ in range(10)]
            for ws in jpeg:
                await ws.receive_json(timeout=10)
                await ws.send_json({"type": "jpeg"})
                assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.BINARY
            await asyncio.gather(*(v.connect() for v in webrtc))
            await asyncio.gather(*(v.wait_frames(5, timeout=20) for v in webrtc))
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                code = await process.wait()
            took = time.monotonic() - started
            assert code == 0
            assert took < 3.0, f"exit took {took:.2f} s"
            # Each socket got a close frame saying "going away" (1001), not a dropped line.
            for ws in jpeg:
                while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.BINARY:
                    pass
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
            for viewer in webrtc:
                assert viewer.ws is not None
                while (msg := await viewer.ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                    pass  # a bye for the peer may come first
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        assert process.stderr is not None
        errors = (await process.stderr.read()).decode()
        assert "Traceback" not in errors, errors
    finally:
        await asyncio.gather(*(v.close() for v in webrtc))
        if process.returncode is None:
            process.kill()
            await process.wait()
