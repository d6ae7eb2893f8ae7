"""The wall in headless Chromium: the test pattern, a video file and a failing camera at once.

Every tile is live (refreshed within 2 s) except the failing camera's, which says "no signal";
each camera's own page plays its own pictures over WebRTC and JPEG while the failing one stays
down; /healthz names it and flips back when it recovers (the capture-device double).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page

from signaling.app import create_app
from signaling.config import CameraConfig
from tests.browser import wait_for
from tests.conftest import LOOPBACK_CONFIG
from tests.test_faults import FakeCamera
from webrtc.sources import CaptureSource, SourceSpec, TestPatternSource, open_source

pytestmark = [pytest.mark.browser]

CLIP_SIZE = (400, 300)
DIAGNOSIS_JS = """() => ({
    url: location.href,
    tiles: [...document.querySelectorAll('.tile')].map((t) => ({ ...t.dataset })),
    view: document.querySelector('peercam-view')?.info ?? null,
})"""


def _write_clip(path: Path) -> None:
    """Two seconds of a moving bar, 400x300: a size no other camera has."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height = CLIP_SIZE
        stream.pix_fmt = "yuv420p"
        for n in range(60):
            image = np.full((CLIP_SIZE[1], CLIP_SIZE[0], 3), 90, np.uint8)
            image[:, (n * 6) % CLIP_SIZE[0] :][:, :40] = 250
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[TestServer, FakeCamera]]:
    """A server with three cameras: pattern (640x480), clip (a file), door (unplugged)."""
    clip = tmp_path / "clip.mp4"
    _write_clip(clip)
    camera = FakeCamera()
    camera.plugged.clear()
    cameras = (
        CameraConfig("pattern", SourceSpec("test")),
        CameraConfig("clip", SourceSpec("file", str(clip))),
        CameraConfig("door", SourceSpec("camera", "/dev/video74")),
    )
    sources = {
        "pattern": TestPatternSource(640, 480),
        "clip": await asyncio.to_thread(open_source, SourceSpec("file", str(clip))),
        "door": CaptureSource(
            "camera", "/dev/video74", width=320, height=240, device_factory=camera.open
        ),
    }
    app = create_app(replace(LOOPBACK_CONFIG, cameras=cameras), sources=sources)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield server, camera
    finally:
        await server.close()


async def _tiles(page: Page) -> dict[str, dict[str, Any]]:
    tiles: list[dict[str, Any]] = await page.evaluate(
        "() => [...document.querySelectorAll('.tile')].map((t) => ({ ...t.dataset }))"
    )
    return {t["camera"]: t for t in tiles}


async def _healthz(server: TestServer) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.make_url("/healthz")) as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def _until_healthz(server: TestServer, status: int, failing: list[str]) -> None:
    async with asyncio.timeout(20):
        while True:
            got, body = await _healthz(server)
            if got == status and body["failing"] == failing:
                return
            await asyncio.sleep(0.2)  # polling the server's own account: no event to wait on


async def _view_size(page: Page, mode: str) -> list[int]:
    """The size the element shows in ``mode`` once it plays in that mode."""
    await wait_for(
        page,
        f"""() => {{
            const el = document.querySelector('peercam-view');
            const video = el?.shadowRoot.querySelector('video');
            return el?.dataset.state === 'playing' && el.info.mode === '{mode}'
                && ('{mode}' === 'WebRTC' ? video.videoWidth > 0 : el.info.framesDrawn > 5);
        }}""",
        timeout_s=20,
        what=f"the camera page playing {mode}",
        diagnosis_js=DIAGNOSIS_JS,
    )
    size: list[int] = await page.evaluate(
        """(mode) => {
            const root = document.querySelector('peercam-view').shadowRoot;
            if (mode === 'WebRTC') {
                const v = root.querySelector('video');
                return [v.videoWidth, v.videoHeight];
            }
            const c = root.querySelector('canvas');
            return [c.width, c.height];
        }""",
        mode,
    )
    return size


async def test_the_wall_shows_every_camera_and_the_failing_one_as_no_signal(
    browser: Browser, site: tuple[TestServer, FakeCamera]
) -> None:
    """An operator's wall: all tiles live at 1280x900, the broken camera says so and
    recovers by itself, and each tile opens that camera's own full view."""
    server, camera = site
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()
        await page.goto(str(server.make_url("/")))
        await wait_for(
            page,
            """() => {
                const t = Object.fromEntries([...document.querySelectorAll('.tile')]
                    .map((e) => [e.dataset.camera, e.dataset]));
                return t.pattern?.state === 'live' && Number(t.pattern.pictures) >= 2
                    && t.clip?.state === 'live' && Number(t.clip.pictures) >= 2
                    && t.door?.state === 'no-signal';
            }""",
            timeout_s=20,
            what="two live tiles and the door's 'no signal'",
            diagnosis_js=DIAGNOSIS_JS,
        )
        assert await page.locator(".tile[data-camera=door] .state").inner_text() == "no signal"
        # All three tiles fit the window without scrolling.
        for name in ("pattern", "clip", "door"):
            box = await page.locator(f".tile[data-camera={name}]").bounding_box()
            assert box is not None
            assert box["x"] + box["width"] <= 1280
            assert box["y"] + box["height"] <= 900
            assert box["width"] >= 250, box  # a tile, not a thumbnail stamp
        # Each live tile is refreshed at least every 2 s (generous: 3 more within 8 s).
        before = await _tiles(page)
        await wait_for(
            page,
            f"""() => {{
                const n = (name) => Number(document.querySelector(
                    `.tile[data-camera=${{name}}]`).dataset.pictures);
                return n('pattern') >= {int(before["pattern"]["pictures"]) + 3}
                    && n('clip') >= {int(before["clip"]["pictures"]) + 3};
            }}""",
            timeout_s=8,
            what="three more pictures in each live tile",
            diagnosis_js=DIAGNOSIS_JS,
        )
        status, body = await _healthz(server)
        assert status == 503
        assert body["failing"] == ["door"]

        # While the door is down, the other cameras play in full: WebRTC and JPEG.
        view = await context.new_page()
        await view.goto(str(server.make_url("/cam/pattern/")))
        assert await _view_size(view, "WebRTC") == [640, 480]
        await view.goto(str(server.make_url("/cam/clip/?mode=jpeg")))
        assert await _view_size(view, "JPEG") == [*CLIP_SIZE]

        # The door comes back: its tile goes live and /healthz is 200, by themselves.
        camera.plugged.set()
        await wait_for(
            page,
            "() => document.querySelector('.tile[data-camera=door]')?.dataset.state === 'live'",
            timeout_s=15,
            what="the door's tile live again",
            diagnosis_js=DIAGNOSIS_JS,
        )
        await _until_healthz(server, 200, [])
        # A click on a tile opens that camera's own page, which plays it over WebRTC.
        await page.locator(".tile[data-camera=door]").click()
        await page.wait_for_url("**/cam/door/")
        width, height = await _view_size(page, "WebRTC")
        assert width <= 320  # the door's size (or a lower rung of its ladder), 4:3
        assert width * 3 == height * 4
        # The door's own picture: the double's flat grey (200), not another camera's.
        centre: list[int] = await page.evaluate(
            """() => {
                const v = document.querySelector('peercam-view').shadowRoot.querySelector('video');
                const c = document.createElement('canvas');
                c.width = v.videoWidth; c.height = v.videoHeight;
                const g = c.getContext('2d');
                g.drawImage(v, 0, 0);
                return [...g.getImageData(c.width / 2, c.height * 3 / 4, 1, 1).data.slice(0, 3)];
            }"""
        )
        assert all(180 <= value <= 220 for value in centre), centre
    finally:
        await context.close()


async def test_the_wall_fits_a_phone(browser: Browser, site: tuple[TestServer, FakeCamera]) -> None:
    """On a phone the tiles stack in one column as wide as the screen."""
    server, _ = site
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = await context.new_page()
        await page.goto(str(server.make_url("/")))
        await page.wait_for_selector(".tile[data-camera=door]")
        boxes = [
            await page.locator(f".tile[data-camera={name}]").bounding_box()
            for name in ("pattern", "clip", "door")
        ]
        assert all(b is not None for b in boxes)
        xs = {round(b["x"]) for b in boxes if b is not None}
        assert len(xs) == 1  # one column
        assert all(b is not None and 370 <= b["width"] <= 390 for b in boxes)
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390  # no sideways scrolling
    finally:
        await context.close()
