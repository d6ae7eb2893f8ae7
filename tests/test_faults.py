"""Camera faults: a capture-device double (not a mock of aiortc) unplugs and replugs."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from signaling.app import create_app
from tests.aiortc_viewer import AiortcViewer
from tests.conftest import LOOPBACK_CONFIG, service_of, ws_url
from webrtc import timebar
from webrtc.frames import CapturedFrame
from webrtc.sources import CaptureSource

WIDTH, HEIGHT, FPS = 320, 240, 30.0


class FakeCamera:
    """A capture device: paced pictures (bright, with the time bar) until unplugged."""

    def __init__(self) -> None:
        self.plugged = threading.Event()
        self.plugged.set()
        self.opens = 0

    def open(self) -> FakeCamera.Device:
        self.opens += 1
        return FakeCamera.Device(self)

    class Device:
        def __init__(self, camera: FakeCamera) -> None:
            self._camera = camera
            self._open = camera.plugged.is_set()
            self._next = time.monotonic()

        def isOpened(self) -> bool:
            return self._open

        def read(self) -> tuple[bool, Any]:
            if not self._open or not self._camera.plugged.is_set():
                self._open = False
                return False, None
            self._next += 1 / FPS
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # a real camera blocks until its next frame (not on a loop)
            image = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
            timebar.stamp(image, int(time.time() * 1000))
            return True, image

        def release(self) -> None:
            self._open = False

        def get(self, prop: int) -> float:
            return FPS if prop == cv2.CAP_PROP_FPS else 0.0

        def set(self, prop: int, value: float) -> bool:
            return False


async def _next_where(
    source: CaptureSource, predicate: Any, after: int, timeout: float
) -> tuple[int, CapturedFrame]:
    async with asyncio.timeout(timeout):
        while True:
            after, frame = await source.frames.next(after)
            if predicate(frame):
                return after, frame


@pytest.fixture
def camera() -> FakeCamera:
    return FakeCamera()


@pytest.fixture
async def fake_source(camera: FakeCamera) -> Any:
    source = CaptureSource("camera", "/dev/video74", width=WIDTH, height=HEIGHT,
                           device_factory=camera.open)  # fmt: skip
    source.open()
    source.start()
    yield source
    await asyncio.to_thread(source.stop)


async def test_unplugged_camera_shows_no_signal_then_comes_back(
    fake_source: CaptureSource, camera: FakeCamera
) -> None:
    """Months unattended: a camera that drops out must come back by itself, quickly."""
    after, frame = await _next_where(fake_source, lambda f: f.live, 0, 5)
    camera.plugged.clear()
    after, frame = await _next_where(fake_source, lambda f: not f.live, after, 5)
    assert frame.width == WIDTH  # the no-signal picture keeps the stream's size
    assert timebar.read(frame.bgr) is not None
    assert float(frame.bgr.mean()) < 100  # dark, not the camera's bright picture
    assert fake_source.status()["state"] == "reconnecting"
    # Still "no signal" a picture later: the loss keeps being shown, not a frozen frame.
    after, frame = await _next_where(fake_source, lambda f: True, after, 5)
    assert not frame.live
    back = time.monotonic()
    camera.plugged.set()
    after, frame = await _next_where(fake_source, lambda f: f.live, after, 5)
    recovery = time.monotonic() - back
    assert recovery < 5.0, f"video resumed {recovery:.2f} s after the camera came back"
    assert fake_source.status()["state"] == "live"
    assert camera.opens >= 2


async def test_viewers_stay_connected_through_a_camera_fault(
    fake_source: CaptureSource, camera: FakeCamera
) -> None:
    """WebRTC and JPEG viewers see 'no signal' during the fault and video again after."""
    app = create_app(LOOPBACK_CONFIG, source=fake_source)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    viewer = AiortcViewer(ws_url(server), codec="vp8")
    try:
        await viewer.connect()
        await viewer.wait_frames(10, timeout=15)
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as jpeg:
            await jpeg.receive_json(timeout=10)
            await jpeg.send_json({"type": "jpeg"})

            async def jpeg_brightness() -> float:
                msg = await jpeg.receive(timeout=10)
                await jpeg.send_json({"type": "ack"})
                image = cv2.imdecode(np.frombuffer(msg.data[20:], np.uint8), cv2.IMREAD_GRAYSCALE)
                assert image is not None
                return float(np.asarray(image)[HEIGHT // 2 :, :].mean())

            assert await jpeg_brightness() > 150
            camera.plugged.clear()
            async with asyncio.timeout(10):
                while await jpeg_brightness() > 100:
                    pass  # pictures until the no-signal one arrives
            seen = viewer.received.frames
            await viewer.wait_frames(seen + 3, timeout=10)  # WebRTC keeps flowing: no signal
            assert fake_source.status()["state"] == "reconnecting"
            assert viewer.received.last_luma < 100  # WebRTC shows the no-signal picture too
            back = time.monotonic()
            camera.plugged.set()
            async with asyncio.timeout(10):
                while await jpeg_brightness() < 150:
                    pass
            assert time.monotonic() - back < 5.0
            async with asyncio.timeout(10):
                while viewer.received.last_luma < 150:
                    await viewer.wait_frames(viewer.received.frames + 1, timeout=10)
            assert time.monotonic() - back < 5.0  # WebRTC video is back as fast
        assert viewer.pc is not None
        assert viewer.pc.connectionState == "connected"
        assert len(service_of(server).peers) == 1
    finally:
        await viewer.close()
        await server.close()
