"""Integration: real aiortc viewers against a real peercam server on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.aiortc_viewer import AiortcViewer
from tests.conftest import ServerFactory, eventually, service_of, ws_url
from webrtc.encoders import Codec


async def _status(server: TestServer) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.make_url("/api/status")) as response,
    ):
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_each_codec_delivers_test_pattern_frames(server: TestServer, codec: str) -> None:
    """Both codecs a browser may pick must carry real pictures, not just packets."""
    viewer = AiortcViewer(ws_url(server), codec=codec)
    try:
        await viewer.connect()
        assert viewer.answer["codec"] == codec
        await viewer.wait_frames(40, timeout=15)
        received = viewer.received
        assert received.stamped > 30, f"only {received.stamped} frames carried the bar"
        assert (received.width, received.height) == (640, 480)
        # Same clock on both ends: the bar's capture time must be recent, not a stale frame.
        assert 0 <= sorted(received.latencies_ms)[len(received.latencies_ms) // 2] < 2000
    finally:
        await viewer.close()


async def test_three_viewers_of_one_codec_run_exactly_one_encoder(server: TestServer) -> None:
    """Encode once: the encoder count stays one however many viewers watch."""
    viewers = [AiortcViewer(ws_url(server), codec="vp8", decode_bar=False) for _ in range(3)]
    try:
        await asyncio.gather(*(v.connect() for v in viewers))
        await asyncio.gather(*(v.wait_frames(31, timeout=15) for v in viewers))
        status = await _status(server)
        assert status["encodersStarted"] == {"vp8": 1, "h264": 0}
        # One encoder: the ladder's top rung, which every viewer on a clean link gets.
        [(name, encoder)] = status["encoders"].items()
        assert name == f"vp8@{status['ladder'][0].split('@')[1]}"
        assert encoder["viewers"] == 3
        assert all(p["rungIndex"] == 0 for p in status["peers"])
        assert len(status["peers"]) == 3
        assert all(p["framesSent"] > 30 for p in status["peers"])
        assert all(p["resyncs"] == 0 for p in status["peers"])  # nobody fell behind
    finally:
        await asyncio.gather(*(v.close() for v in viewers))
    service = service_of(server)
    # The last viewer out stops the encoder.
    await eventually(lambda: not service.encoders.running() and len(service.peers) == 0)


async def test_viewer_joining_late_decodes_at_once(server: TestServer) -> None:
    """A late joiner needs a fresh keyframe at once, not at the next periodic one (5 s); the
    bound is generous (ICE + DTLS on a busy machine), the figure is benchmarked."""
    first = AiortcViewer(ws_url(server), codec="h264", decode_bar=False)
    late = AiortcViewer(ws_url(server), codec="h264", decode_bar=False)
    try:
        await first.connect()
        await first.wait_frames(60, timeout=15)  # about 2 s of video at 30 fps
        started = time.monotonic()
        await late.connect()
        await late.wait_frames(1, timeout=10)
        assert late.received.first_frame_at is not None
        join_to_picture = late.received.first_frame_at - started
        assert join_to_picture < 3.0, f"first picture after {join_to_picture:.2f} s"
        started_h264 = service_of(server).encoders.started
        assert sum(n for key, n in started_h264.items() if key.codec is Codec.H264) == 1
    finally:
        await first.close()
        await late.close()


async def test_closing_the_socket_closes_the_peer(server: TestServer) -> None:
    """A viewer that goes away must not leave a peer (and its encoder user) behind."""
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(5, timeout=15)
        service = service_of(server)
        assert len(service.peers) == 1
        assert viewer.ws is not None
        await viewer.ws.close()
        await eventually(lambda: len(service.peers) == 0 and not service.encoders.running())
        assert len(service.viewers) == 0
    finally:
        await viewer.close()


async def test_closing_the_peer_closes_the_socket(server: TestServer) -> None:
    """The other direction: a peer that ends takes its signaling socket with it."""
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(5, timeout=15)
        assert viewer.pc is not None
        await viewer.pc.close()
        message = await viewer.next_server_message(timeout=15)
        assert message["type"] == "bye"
        closing = await viewer.next_server_message(timeout=15)
        assert closing["type"] in ("<CLOSE>", "<CLOSED>", "<CLOSING>")
        service = service_of(server)
        await eventually(lambda: len(service.peers) == 0 and len(service.viewers) == 0)
    finally:
        await viewer.close()


async def test_peer_that_never_connects_is_dropped_after_the_timeout(
    make_server: ServerFactory,
) -> None:
    """ICE that never completes would otherwise hold a peer forever (aioice never gives up)."""
    server = await make_server(connect_timeout=1.0)
    viewer = AiortcViewer(ws_url(server))
    try:
        viewer.apply_answer = False
        await viewer.connect()
        service = service_of(server)
        assert len(service.peers) == 1
        message = await viewer.next_server_message(timeout=10)
        assert message == {"type": "bye", "reason": "not connected within 1 s"}
        await eventually(lambda: len(service.peers) == 0 and not service.encoders.running())
    finally:
        await viewer.close()


async def test_extra_viewers_get_a_clear_error(make_server: ServerFactory) -> None:
    """--max-viewers protects a small board; the refused viewer must learn why."""
    server = await make_server(max_viewers=1)
    first = AiortcViewer(ws_url(server), decode_bar=False)
    try:
        await first.connect()
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
            message = await ws.receive_json(timeout=10)
            assert message["type"] == "error"
            assert message["code"] == "too-many-viewers"
            closing = await ws.receive(timeout=10)
            assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1013)
    finally:
        await first.close()


async def test_server_codec_restriction_wins_over_viewer_preference(
    make_server: ServerFactory,
) -> None:
    """--codec h264 must hold even for a viewer that prefers VP8 but can do both."""
    server = await make_server(codecs=(Codec.H264,))
    viewer = AiortcViewer(ws_url(server), decode_bar=False)  # offers VP8 first, then H.264
    try:
        await viewer.connect()
        assert viewer.answer["codec"] == "h264"
        await viewer.wait_frames(5, timeout=15)
    finally:
        await viewer.close()


async def test_viewer_without_an_allowed_codec_gets_an_error(make_server: ServerFactory) -> None:
    """A VP8-only viewer of an H.264-only server must be told, not left waiting."""
    server = await make_server(codecs=(Codec.H264,))
    viewer = AiortcViewer(ws_url(server), codec="vp8")
    try:
        with pytest.raises(RuntimeError, match="no-codec"):
            await viewer.connect()
        assert len(service_of(server).peers) == 0
    finally:
        await viewer.close()


async def test_per_viewer_encoding_mode_still_works_for_comparison(
    make_server: ServerFactory,
) -> None:
    """The benchmark's baseline (aiortc encoding per viewer) must be a working server too."""
    server = await make_server(per_viewer_encoding=True)
    viewers = [AiortcViewer(ws_url(server), codec="vp8") for _ in range(2)]
    try:
        await asyncio.gather(*(v.connect() for v in viewers))
        await asyncio.gather(*(v.wait_frames(20, timeout=20) for v in viewers))
        assert all(v.received.stamped >= 15 for v in viewers)
        assert service_of(server).encoders.started.total() == 0
    finally:
        await asyncio.gather(*(v.close() for v in viewers))
