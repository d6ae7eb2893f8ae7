"""JPEG pictures: over the viewer's socket, MJPEG, snapshots, and the original /video protocol."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from tests.aiortc_viewer import AiortcViewer
from tests.conftest import ServerFactory, service_of, ws_url
from webrtc import timebar
from webrtc.jpeg import HEADER, MAGIC


def _decode(data: bytes) -> np.ndarray[Any, Any]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a valid JPEG"
    return np.asarray(image)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class JpegClient:
    """A JPEG-mode viewer on /ws that acknowledges (or not) what it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, ack: bool) -> None:
        self.ws = ws
        self.ack = ack
        self.pictures = 0
        self.latencies_ms: list[float] = []
        self.last: bytes = b""
        self.size = (0, 0)

    async def start(self, **request: Any) -> None:
        config = await self.ws.receive_json(timeout=10)
        assert config["type"] == "config"
        assert "jpeg" in config["modes"]
        await self.ws.send_json({"type": "jpeg", **request})

    async def receive_for(self, seconds: float) -> int:
        """Receive (and ack) pictures for ``seconds``; returns how many came."""
        start_count = self.pictures
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await self.ws.receive(timeout=left)
            except TimeoutError:
                break
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            magic, _seq, captured, width, height = HEADER.unpack_from(msg.data)
            assert magic == MAGIC
            self.last = msg.data[HEADER.size :]
            self.size = (width, height)
            self.latencies_ms.append((time.time() - captured) * 1000)
            self.pictures += 1
            if self.ack:
                await self.ws.send_json({"type": "ack"})
        return self.pictures - start_count


async def test_jpeg_mode_sends_fresh_binary_pictures_at_full_rate(server: TestServer) -> None:
    """The fallback must be live video: every frame, newest first, with its capture time."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        client = JpegClient(ws, ack=True)
        await client.start(quality=70)
        await client.receive_for(0.5)  # warm up
        count = await client.receive_for(2.0)
        assert count / 2.0 >= 10, f"{count / 2.0:.1f} pictures/s"
        picture = _decode(client.last)
        assert picture.shape == (480, 640, 3)
        assert client.size == (640, 480)  # the header tells the picture's size
        millis = timebar.read(picture)
        assert millis is not None
        assert abs(time.time() * 1000 - millis) < 2000
        assert sorted(client.latencies_ms)[len(client.latencies_ms) // 2] < 500
        assert len(service_of(server).jpeg_streams) == 1


async def test_viewer_that_stops_acknowledging_gets_only_its_credit(server: TestServer) -> None:
    """A stalled viewer costs nothing: no queue grows, and the others keep full rate."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(server)) as silent_ws,
        http.ws_connect(ws_url(server)) as good_ws,
    ):
        silent = JpegClient(silent_ws, ack=False)
        good = JpegClient(good_ws, ack=True)
        await silent.start()
        await good.start()
        await good.receive_for(0.5)
        rss_before = _rss_mb()
        results = await asyncio.gather(silent.receive_for(3.0), good.receive_for(3.0))
        rss_growth = _rss_mb() - rss_before
        assert silent.pictures == 2  # the credit, and not one more in 3.5 s
        assert results[1] / 3.0 >= 10, f"good viewer at {results[1] / 3.0:.1f} pictures/s"
        assert rss_growth < 20, f"RSS grew {rss_growth:.1f} MB"


async def test_mjpeg_stream_is_well_formed_and_live(server: TestServer) -> None:
    """<img>, VLC and ffplay parse multipart/x-mixed-replace: boundaries must be exact."""
    async with aiohttp.ClientSession() as http, http.get(server.make_url("/stream.mjpg")) as r:
        assert r.status == 200
        content_type = r.headers["Content-Type"]
        assert content_type.startswith("multipart/x-mixed-replace; boundary=")
        boundary = content_type.split("boundary=")[1].encode()
        pictures = 0
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            assert await r.content.readline() == b"--" + boundary + b"\r\n"
            headers: dict[str, str] = {}
            while (line := await r.content.readline()) != b"\r\n":
                name, value = line.decode().split(":", 1)
                headers[name.strip().lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            data = await r.content.readexactly(int(headers["content-length"]))
            assert data[:2] == b"\xff\xd8"
            assert data[-2:] == b"\xff\xd9"
            assert await r.content.readexactly(2) == b"\r\n"
            if pictures % 10 == 0:
                assert _decode(data).shape == (480, 640, 3)
            pictures += 1
        rate = pictures / (time.monotonic() - started)
        assert rate >= 10, f"{rate:.1f} pictures/s"


async def test_snapshot_is_a_jpeg_of_the_configured_size(make_server: ServerFactory) -> None:
    """/snapshot.jpg is what scripts and home-automation tools poll."""
    server = await make_server(pattern={"width": 800, "height": 600})
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/snapshot.jpg")) as r:
            assert r.status == 200
            assert r.content_type == "image/jpeg"
            assert r.headers["Cache-Control"] == "no-store"
            picture = _decode(await r.read())
        assert picture.shape == (600, 800, 3)
        assert timebar.read(picture) is not None
        async with http.get(server.make_url("/snapshot.jpg?width=400&quality=50")) as r:
            assert _decode(await r.read()).shape == (300, 400, 3)


@pytest.mark.parametrize(
    "query", ["quality=abc", "quality=0", "quality=101", "width=-5", "width=1e3", "quality=٣"]
)
async def test_bad_picture_query_is_a_clear_400(server: TestServer, query: str) -> None:
    """A typo in a URL gets a reason, not a 500 or a silently different picture."""
    async with aiohttp.ClientSession() as http:
        for path in ("/snapshot.jpg", "/stream.mjpg"):
            async with http.get(server.make_url(f"{path}?{query}")) as r:
                assert r.status == 400
                assert "must be an integer" in await r.text()


async def test_original_video_protocol_serves_twenty_greedy_clients(server: TestServer) -> None:
    """Old clients asking every 10 ms must neither build a backlog nor starve each other."""
    seconds = 2.0

    async def legacy_client(http: aiohttp.ClientSession) -> tuple[int, str]:
        async with http.ws_connect(str(server.make_url("/video"))) as ws:

            async def ask() -> None:
                while True:
                    await ws.send_str("next")
                    await asyncio.sleep(0.01)  # the original page's request rate

            asker = asyncio.get_running_loop().create_task(ask())
            received, last = 0, ""
            deadline = time.monotonic() + seconds
            try:
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        msg = await ws.receive(timeout=left)
                    except TimeoutError:
                        break
                    assert msg.type == aiohttp.WSMsgType.TEXT
                    last = json.loads(msg.data)["img"]
                    received += 1
            finally:
                asker.cancel()
            return received, last

    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(legacy_client(http) for _ in range(20)))
    for received, last in results:
        assert received / seconds >= 8, [r for r, _ in results]
        prefix = "data:image/jpeg;base64,"
        assert last.startswith(prefix)
        assert _decode(base64.b64decode(last[len(prefix) :])).shape == (480, 640, 3)
    # Merged requests: no client got more pictures than the source made.
    assert max(r for r, _ in results) / seconds <= 31 * 1.5


async def test_every_picture_consumer_shares_one_jpeg_encoder(server: TestServer) -> None:
    """Encode once: JPEG viewers, MJPEG, snapshots and /video read the same pictures."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(server)) as jpeg_ws,
        http.ws_connect(str(server.make_url("/video"))) as legacy_ws,
        http.get(server.make_url("/stream.mjpg")) as mjpeg,
    ):
        client = JpegClient(jpeg_ws, ack=True)
        await client.start()
        assert await client.receive_for(0.5) > 0
        await legacy_ws.send_str("x")
        assert "img" in await legacy_ws.receive_json(timeout=10)
        assert (await mjpeg.content.readline()).startswith(b"--")
        async with http.get(server.make_url("/snapshot.jpg")) as r:
            assert r.status == 200
        async with http.get(server.make_url("/api/status")) as r:
            status = (await r.json())["jpeg"]
        assert status["encodersStarted"] == 1
        assert list(status["encoders"]) == ["q75"]
        assert status["encoders"]["q75"]["users"] == 4 - 1  # the snapshot has let go
        assert status["viewers"] == 1
        assert status["mjpegViewers"] == 1
        assert status["legacyViewers"] == 1


async def test_switching_a_webrtc_socket_to_jpeg_closes_the_peer(server: TestServer) -> None:
    """Fallback uses the same socket: the abandoned peer must not linger."""
    viewer = AiortcViewer(ws_url(server), decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(3, timeout=15)
        assert viewer.ws is not None
        await viewer.ws.send_json({"type": "jpeg", "reason": "no-video"})
        msg = await viewer.ws.receive(timeout=10)
        while msg.type == aiohttp.WSMsgType.TEXT:  # a bye for the peer may come first
            msg = await viewer.ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.BINARY
        service = service_of(server)
        assert len(service.peers) == 0
        assert service.fallbacks["no-video"] == 1
        await viewer.ws.send_json({"type": "offer", "sdp": "v=0\r\n"})
        while (msg := await viewer.ws.receive(timeout=10)).type == aiohttp.WSMsgType.BINARY:
            pass
        reply = json.loads(msg.data)
        assert reply["code"] == "unexpected"
    finally:
        await viewer.close()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"type": "ack"}, "unexpected"),
        ({"type": "jpeg", "quality": 0}, "invalid-field"),
        ({"type": "jpeg", "quality": "high"}, "invalid-field"),
        ({"type": "jpeg", "maxFps": 0}, "invalid-field"),
        ({"type": "jpeg", "maxWidth": 10**9}, "invalid-field"),
        ({"type": "jpeg", "reason": "because"}, "invalid-field"),
    ],
)
async def test_bad_jpeg_messages_get_typed_errors(
    server: TestServer, message: dict[str, Any], code: str
) -> None:
    """JPEG control messages are validated like every other message."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        await ws.receive_json(timeout=10)
        await ws.send_json(message)
        reply = await ws.receive_json(timeout=10)
        assert reply["type"] == "error"
        assert reply["code"] == code


async def test_jpeg_only_server_refuses_offers_with_a_reason(make_server: ServerFactory) -> None:
    """With --no-webrtc the client must learn to switch, not wait for an answer."""
    server = await make_server(webrtc=False)
    viewer = AiortcViewer(ws_url(server))
    try:
        with pytest.raises(RuntimeError, match="webrtc-disabled"):
            await viewer.connect()
        assert viewer.config["modes"] == ["jpeg"]
    finally:
        await viewer.close()


async def test_max_fps_caps_a_viewers_rate(server: TestServer) -> None:
    """A viewer on a slow link asks for fewer pictures; it gets fewer, still the newest."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        client = JpegClient(ws, ack=True)
        await client.start(maxFps=5)
        await client.receive_for(0.5)
        count = await client.receive_for(2.0)
        assert 5 <= count <= 14, count
