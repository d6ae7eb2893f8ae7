"""H.264 pass-through with a real RTSP camera (gst-rtsp-server, tests/rtsp_server.py).

The camera stamps its capture time into every picture before encoding, so a viewer that decodes
the bar is looking at the camera's own pixels, never at a picture peercam encoded.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser

from signaling.app import create_app
from signaling.config import CameraConfig
from signaling.state import Service
from tests.aiortc_viewer import AiortcViewer
from tests.browser import TIMEBAR_JS
from tests.conftest import LOOPBACK_CONFIG, eventually, ws_url
from tests.rtsp import RtspCamera
from tests.test_ladder import _media_ssrc
from tests.test_ladder import _send_remb as send_remb
from webrtc.passthrough import StreamSource
from webrtc.sources import SourceSpec, open_source

pytestmark = pytest.mark.slow


@pytest.fixture
async def camera() -> AsyncIterator[RtspCamera]:
    async with RtspCamera(gop_seconds=4.0) as camera:
        yield camera


async def serve(source: StreamSource) -> TestServer:
    config = replace(
        LOOPBACK_CONFIG, cameras=(CameraConfig(source=SourceSpec("url", str(source.target))),)
    )
    server = TestServer(create_app(config, source=source), host="127.0.0.1", port=0)
    await server.start_server()
    return server


async def open_stream(url: str, **kwargs: bool) -> StreamSource:
    if kwargs:
        source = StreamSource("url", url, **kwargs)  # type: ignore[arg-type]
        await asyncio.to_thread(source.open)
        return source
    opened = await asyncio.to_thread(open_source, SourceSpec("url", url))
    assert isinstance(opened, StreamSource)
    return opened


async def mid_gop(source: StreamSource, at_least: float) -> int:
    """Wait until the cached GOP is ``at_least`` seconds old (the camera's next IDR is then
    under ``4 - at_least`` s away); the count of IDRs so far."""
    keyframes = source.feed.keyframes
    await eventually(lambda: source.feed.keyframes > keyframes, timeout=10)  # a fresh GOP
    keyframes = source.feed.keyframes
    await eventually(lambda: source.feed.gop_seconds() >= at_least, timeout=10)
    assert source.feed.keyframes == keyframes
    return keyframes


async def test_viewer_gets_the_cameras_own_frames_at_once_and_catches_up(
    camera: RtspCamera,
) -> None:
    source = await open_stream(camera.url("h264"))
    server = await serve(source)
    service = server.app[Service.KEY]
    viewer = AiortcViewer(ws_url(server))  # aiortc offers VP8 first: H.264 must win anyway
    try:
        assert source.passes_through, source.reason
        # Nobody reads pictures: after its first ones the source stops decoding.
        await eventually(lambda: not source.frames.decoding and source.frames_decoded, 10)
        idrs = await mid_gop(source, at_least=1.5)
        await viewer.connect()
        assert viewer.answer["codec"] == "h264"
        await viewer.wait_frames(1, timeout=10)
        first = time.monotonic()
        # Instant start: a picture before the camera's next IDR came (it is >= 0.5 s away).
        assert source.feed.keyframes == idrs, "the first picture waited for the camera's IDR"
        await eventually(lambda: time.monotonic() - first >= 2.5, timeout=5)
        received = viewer.received
        assert received.stamped >= received.frames * 0.9  # the camera's pixels, decoded
        assert (received.width, received.height) == (640, 480)
        # The replayed GOP (>= 1.5 s old) was caught up: the newest pictures are live.
        recent = received.latencies_ms[-15:]
        assert statistics.median(recent) < 1000, recent
        assert received.latencies_ms[0] > 1000  # the first picture was the cached IDR's
        status = service.status()
        assert status["encodersStarted"] == {"vp8": 0, "h264": 0}
        assert status["passthroughStarted"] == 1
        source_status = status["source"]
        assert isinstance(source_status, dict)
        assert source_status["passthrough"] is True
        assert source_status["decoding"] is False  # WebRTC alone costs no decode
        assert status["video"] == {
            "passthrough": True, "passthroughReason": None, "encoder": "libx264",
            "h264TopRung": "passthrough",
        }  # fmt: skip
        # A snapshot starts the decoder, from the cached GOP: a fresh picture at once.
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.make_url("/snapshot.jpg")) as response,
        ):
            assert response.status == 200
            assert (await response.read())[:2] == b"\xff\xd8"
        assert source.frames.decoding
        assert service.status()["encodersStarted"] == {"vp8": 0, "h264": 0}
    finally:
        await viewer.close()
        await server.close()


async def test_without_the_cache_a_viewer_waits_for_the_cameras_idr(camera: RtspCamera) -> None:
    """The control: the same join, mid-GOP, with the GOP cache off."""
    source = await open_stream(camera.url("h264"), gop_cache=False)
    server = await serve(source)
    viewer = AiortcViewer(ws_url(server))
    try:
        idrs = await mid_gop(source, at_least=1.0)
        await viewer.connect()
        await viewer.wait_frames(1, timeout=10)
        assert source.feed.keyframes > idrs  # its first picture was the camera's next IDR
    finally:
        await viewer.close()
        await server.close()


@pytest.mark.parametrize(("mount", "why"), [("bframes", "B-frames"), ("h265", "codec hevc")])
async def test_b_frames_and_h265_are_transcoded_and_play(
    camera: RtspCamera, mount: str, why: str
) -> None:
    source = await open_stream(camera.url(mount))
    server = await serve(source)
    viewer = AiortcViewer(ws_url(server), codec="h264")
    try:
        assert not source.passes_through
        assert source.reason is not None
        assert why in source.reason
        await viewer.connect()
        await viewer.wait_frames(10, timeout=15)
        assert viewer.received.stamped >= 5  # the camera's bar, through decode and encode
        status = server.app[Service.KEY].status()
        assert status["encodersStarted"] == {"vp8": 0, "h264": 1}
        assert status["passthroughStarted"] == 0
        video = status["video"]
        assert isinstance(video, dict)
        assert video["passthrough"] is False
        assert why in str(video["passthroughReason"])
    finally:
        await viewer.close()
        await server.close()


async def test_camera_gone_shows_no_signal_then_video_again(camera: RtspCamera) -> None:
    source = await open_stream(camera.url("h264"))
    server = await serve(source)
    viewer = AiortcViewer(ws_url(server))
    try:
        await viewer.connect()
        await viewer.wait_frames(5, timeout=10)
        assert viewer.received.last_luma > 90  # the camera's picture (grey and a ramp)
        await camera.stop()
        await eventually(lambda: source.state == "reconnecting", timeout=15)
        # Still connected, now showing the dark "no signal" picture (encoded for pass-through).
        await eventually(lambda: viewer.received.last_luma < 70, timeout=10)
        await camera.start()
        await eventually(lambda: source.state == "live", timeout=20)
        await eventually(lambda: viewer.received.last_luma > 90, timeout=10)
        assert source.passes_through
        assert server.app[Service.KEY].status()["encodersStarted"] == {"vp8": 0, "h264": 0}
    finally:
        await viewer.close()
        await server.close()


# Every picture the page's <video> presents: its capture-time bar's age, and when (ms after the
# first one), so the test sees how fast a late joiner reaches live latency.
AGES_JS = """
(() => {
  const ages = { first: null, samples: [] };
  window.__ages = ages;
  customElements.whenDefined("peercam-view").then(() => {
    const video = document.querySelector("peercam-view").video;
    const canvas = document.createElement("canvas");
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    const onFrame = (now, meta) => {
      const width = meta.width, height = Math.max(4, Math.floor(meta.width / 80)) * 2;
      canvas.width = width;
      canvas.height = height;
      ctx.drawImage(video, 0, 0, width, height, 0, 0, width, height);
      const millis = readTimebar(ctx.getImageData(0, 0, width, height).data, width, height);
      if (millis !== null) {
        if (ages.first === null) ages.first = now;
        ages.samples.push([now - ages.first, Date.now() - millis]);
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  });
})();
"""


@pytest.mark.browser
async def test_chromium_joins_mid_gop_and_reaches_live_latency(
    camera: RtspCamera, browser: Browser
) -> None:
    source = await open_stream(camera.url("h264"))
    server = await serve(source)
    context = await browser.new_context()
    await context.add_init_script(TIMEBAR_JS + AGES_JS)
    try:
        page = await context.new_page()
        await mid_gop(source, at_least=1.5)
        await page.goto(str(server.make_url("/")))
        await page.wait_for_function(
            "() => window.__ages.first !== null && performance.now() - window.__ages.first > 2500",
            timeout=20_000,
        )
        samples: list[list[float]] = await page.evaluate("() => window.__ages.samples")
        info = await page.evaluate('() => document.querySelector("peercam-view").info')
        assert info["mode"] == "WebRTC", info
        assert "264" in str(info.get("codec", "")), info
        window = [age for at, age in samples if 1500 <= at <= 2500]
        assert len(window) >= 5, samples  # the camera's own pictures, decoded by Chromium
        assert statistics.median(window) < 1500, window  # generous; figures in the benchmark
        status = server.app[Service.KEY].status()
        assert status["encodersStarted"] == {"vp8": 0, "h264": 0}
    finally:
        await context.close()
        await server.close()


async def test_a_slow_viewer_moves_down_to_a_rung_encoded_from_decoded_frames(
    camera: RtspCamera,
) -> None:
    """The ladder: the top H.264 rung is the camera's stream, the lower ones are encoded from
    the on-demand decoder; the viewer's picture keeps decoding across the switch."""
    source = await open_stream(camera.url("h264"))
    server = await serve(source)
    service = server.app[Service.KEY]
    viewer = AiortcViewer(ws_url(server), codec="h264")
    try:
        await viewer.connect()
        await viewer.wait_frames(20, timeout=15)
        assert service.status()["encodersStarted"] == {"vp8": 0, "h264": 0}
        await send_remb(viewer, 2_000_000)
        await send_remb(viewer, 150_000)  # a drop: the receiver saw its queue grow
        await eventually(lambda: len(viewer.received.sizes) > 1, timeout=15)
        frames = viewer.received.frames
        await viewer.wait_frames(frames + 10, timeout=10)  # decoding goes on after the switch
        assert viewer.received.sizes[-1][1] < 480  # a lower rung
        assert viewer.received.last_luma > 90  # the camera's picture, not a broken frame
        assert source.frames.decoding  # its frames come from the on-demand decoder
        started = service.status()["encodersStarted"]
        assert isinstance(started, dict)
        assert started["h264"] >= 1
        assert started["vp8"] == 0
    finally:
        await viewer.close()
        await server.close()


async def test_a_viewers_pli_is_answered_from_the_cache(camera: RtspCamera) -> None:
    """The camera's IDR cannot be forced: a viewer's PLI restarts that viewer from the cached
    GOP, so it gets a keyframe before the camera's next IDR (4 s GOP)."""
    source = await open_stream(camera.url("h264"))
    server = await serve(source)
    viewer = AiortcViewer(ws_url(server), codec="h264", decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(10, timeout=10)
        idrs = await mid_gop(source, at_least=0.5)
        keyframes = viewer.received.keyframes
        assert viewer.pc is not None
        receiver = viewer.pc.getTransceivers()[0].receiver
        await receiver._send_rtcp_pli(_media_ssrc(viewer))
        await eventually(lambda: viewer.received.keyframes > keyframes, timeout=5)
        assert source.feed.keyframes == idrs, "the keyframe was the camera's next IDR"
        [peer] = server.app[Service.KEY].peers.peers()
        assert peer.stats()["restarts"] == 1
        frames = viewer.received.frames
        await viewer.wait_frames(frames + 30, timeout=10)  # and it plays on
    finally:
        await viewer.close()
        await server.close()
        await asyncio.to_thread(source.stop)
