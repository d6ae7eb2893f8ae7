"""The JPEG fallback in a real browser: headless Chromium without WebRTC, or with WebRTC failing.

Everything runs in the test's own event loop: conftest's ``make_server`` servers and a Chromium
launched per test (about a second each), because Playwright's connection and aiohttp's server
are both bound to the loop that started them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page, Playwright, WebSocketRoute

from tests.browser import CHROMIUM_ARGS, TIMEBAR_JS, chromium_path
from tests.browser import wait_for as wait_for_page
from tests.conftest import ServerFactory, service_of

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

ELEMENT = 'document.querySelector("peercam-view")'

NO_WEBRTC_JS = "delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection"

# ICE with no usable path, in any network: a relay-only policy and no TURN server make Chromium
# gather no candidate at all (so it sends nothing anywhere), while the page still sees a working
# RTCPeerConnection, sends its offer and waits for video that cannot come. Dropping
# --allow-loopback-in-peer-connection alone only has that effect inside a loopback-only
# namespace: on a normal network Chromium still gathers its LAN address.
NO_ICE_PATH_JS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(config = {}) {
      super({ ...config, iceServers: [], iceTransportPolicy: "relay" });
    }
  };
})();
"""

# The first picture on the element's canvas and the first video frame, on one clock.
FIRST_PICTURE_JS = """
(() => {
  const seen = { canvasAt: null, videoAt: null };
  window.__firstPicture = seen;
  const drawImage = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const result = drawImage.apply(this, args);
    if (seen.canvasAt === null && this.canvas.getRootNode() instanceof ShadowRoot) {
      seen.canvasAt = performance.now();
    }
    return result;
  };
  customElements.whenDefined("peercam-view").then(() => {
    const el = document.querySelector("peercam-view");
    el.video.requestVideoFrameCallback((now) => { seen.videoAt = now; });
  });
})();
"""

# Reads the element's canvas: the pixel at 5/8 of each side ((400, 300) of 640x480), in a colour
# bar or the moving white square
# (never black), and the capture-time bar decoded as webrtc/timebar.py read() does.
CANVAS_JS = f"""
() => {{
  const canvas = {ELEMENT}.canvas;
  const width = canvas.width, height = canvas.height;
  const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  {TIMEBAR_JS}
  const p = (Math.floor(height * 5 / 8) * width + Math.floor(width * 5 / 8)) * 4;
  const barMillis = readTimebar(data, width, height);
  return {{ width, height, pixel: [data[p], data[p + 1], data[p + 2]], barMillis,
            now: Date.now() }};
}}
"""

DIAGNOSIS_JS = f"""
() => {{
  const el = {ELEMENT};
  return {{ info: el?.info, state: el?.dataset.state,
            overlay: el?.shadowRoot.querySelector(".overlay").textContent,
            frames: document.body.dataset.frames }};
}}
"""


@pytest.fixture
async def no_ice_browser(playwright: Playwright) -> AsyncIterator[Browser]:
    """Chromium without --allow-loopback-in-peer-connection whose pages gather no ICE candidate."""
    args = [a for a in CHROMIUM_ARGS if a != "--allow-loopback-in-peer-connection"]
    chromium = await playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=args
    )
    yield chromium
    await chromium.close()


async def open_page(browser: Browser, *init_scripts: str) -> Page:
    """A page in a fresh context (closed with the browser) with ``init_scripts`` installed."""
    context = await browser.new_context(viewport={"width": 800, "height": 600})
    for script in init_scripts:
        await context.add_init_script(script)
    return await context.new_page()


def record_signaling(page: Page) -> list[dict[str, Any]]:
    """The JSON messages the page sends on its WebSockets, from now on, in order."""
    sent: list[dict[str, Any]] = []

    def on_frame(payload: str | bytes) -> None:
        if isinstance(payload, str):
            sent.append(json.loads(payload))

    page.on("websocket", lambda ws: ws.on("framesent", on_frame))
    return sent


async def wait_for(page: Page, predicate: str, *, timeout_s: float, what: str) -> Any:
    """Wait until the JS function ``predicate`` returns a truthy value, and return that value."""
    return await wait_for_page(
        page, predicate, timeout_s=timeout_s, what=what, diagnosis_js=DIAGNOSIS_JS
    )


async def wait_for_pictures(
    page: Page, frames: int = 5, *, timeout_s: float = 10
) -> dict[str, Any]:
    """Wait until the element plays JPEG pictures and has drawn more than ``frames``."""
    info: dict[str, Any] = await wait_for(
        page,
        f"""() => {{
            const el = {ELEMENT};
            return el?.dataset.state === "playing" && el.info.mode === "JPEG"
                && el.info.framesDrawn > {frames} ? el.info : null;
        }}""",
        timeout_s=timeout_s,
        what=f"JPEG mode playing, more than {frames} pictures drawn",
    )
    return info


async def read_live_canvas(page: Page) -> dict[str, Any]:
    """The element's canvas once its capture-time bar decodes; the bar must be recent."""
    canvas: dict[str, Any] = await wait_for(
        page,
        f"() => {{ const c = ({CANVAS_JS})(); return c.barMillis !== null ? c : null; }}",
        timeout_s=5,
        what="a canvas picture whose capture-time bar decodes",
    )
    assert abs(canvas["now"] - canvas["barMillis"]) < 5000, canvas
    return canvas


@pytest.mark.browser
async def test_browser_without_webrtc_plays_jpeg_at_full_rate(
    browser: Browser, server: TestServer
) -> None:
    """Browsers without WebRTC (old, locked down, embedded) must still see live video."""
    page = await open_page(browser, NO_WEBRTC_JS)
    await page.goto(str(server.make_url("/")))
    info = await wait_for_pictures(page)
    assert info["mode"] == "JPEG"
    assert info["fallbackReason"] == "no-webrtc"

    await page.evaluate(
        f"() => {{ window.__window = {{ frames: {ELEMENT}.info.framesDrawn, "
        "at: performance.now() }; }"
    )
    rate: dict[str, float] = await wait_for(
        page,
        f"""() => {{
            const start = window.__window, now = performance.now();
            return now - start.at >= 3000
                ? {{ frames: {ELEMENT}.info.framesDrawn - start.frames, ms: now - start.at }}
                : null;
        }}""",
        timeout_s=10,
        what="a 3 s measuring window",
    )
    fps = rate["frames"] * 1000 / rate["ms"]
    # Live, not a slideshow; the rate itself is a benchmark figure (2 busy cores here).
    assert fps >= 10, f"{fps:.1f} pictures/s drawn: {rate}"

    canvas = await read_live_canvas(page)
    assert (canvas["width"], canvas["height"]) == (640, 480)
    info = await page.evaluate(f"() => {ELEMENT}.info")
    assert info["latencyMs"] is not None
    assert info["latencyMs"] < 5000, info

    overlay = await page.evaluate(
        f'() => {ELEMENT}.shadowRoot.querySelector(".overlay").textContent'
    )
    assert "JPEG" in overlay
    assert "this browser has no WebRTC" in overlay

    assert service_of(server).fallbacks == Counter({"no-webrtc": 1})
    status = await (await page.request.get(str(server.make_url("/api/status")))).json()
    assert status["fallbacks"] == {"no-webrtc": 1}

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "browser-jpeg-fallback.png")


@pytest.mark.browser
async def test_jpeg_only_server_makes_the_page_fall_back(
    browser: Browser, make_server: ServerFactory
) -> None:
    """A server started with --no-webrtc must still be watchable from the ordinary page."""
    server = await make_server(webrtc=False)
    page = await open_page(browser)
    await page.goto(str(server.make_url("/")))
    info = await wait_for_pictures(page, frames=10)
    assert info["fallbackReason"] == "webrtc-disabled"
    await read_live_canvas(page)
    assert service_of(server).fallbacks == Counter({"webrtc-disabled": 1})


@pytest.mark.browser
async def test_page_falls_back_when_ice_has_no_path(
    no_ice_browser: Browser, make_server: ServerFactory
) -> None:
    """Firewalls that block every ICE path are common: the viewer must not stare at black."""
    server = await make_server()
    page = await open_page(no_ice_browser, NO_ICE_PATH_JS)
    sent = record_signaling(page)
    started = time.monotonic()
    await page.goto(str(server.make_url("/?fallback-after=2")))
    info = await wait_for_pictures(page, frames=0)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"fell back after {elapsed:.1f} s"
    assert info["fallbackReason"] in ("no-video", "failed"), info
    await read_live_canvas(page)
    assert service_of(server).fallbacks == Counter({info["fallbackReason"]: 1})

    # WebRTC was really tried, and the browser had no candidate to offer.
    types = [m["type"] for m in sent]
    assert types.index("offer") < types.index("jpeg"), types
    assert [m["candidate"] for m in sent if m["type"] == "candidate"] in ([], [None]), sent


@pytest.mark.browser
async def test_page_falls_back_when_the_server_gives_up_on_ice_first(
    no_ice_browser: Browser, make_server: ServerFactory
) -> None:
    """A --connect-timeout shorter than the page's deadline must not keep the viewer in black."""
    server = await make_server(connect_timeout=1.0)
    page = await open_page(no_ice_browser, NO_ICE_PATH_JS)
    await page.goto(str(server.make_url("/?fallback-after=3")))
    info = await wait_for_pictures(page, frames=0, timeout_s=7)
    assert info["fallbackReason"] in ("no-video", "failed"), info


@pytest.mark.browser
async def test_first_picture_is_drawn_while_webrtc_negotiates(
    browser: Browser, server: TestServer
) -> None:
    """WebRTC can take a second or more to start: a snapshot first means no empty box meanwhile."""
    # On loopback WebRTC often plays within tens of milliseconds of the snapshot, and the page
    # rightly drops a snapshot that comes after the video. Holding the answer (a slow network)
    # until the snapshot is on the canvas turns that race into a fixed order.
    release = asyncio.Event()

    def hold_answer(route: WebSocketRoute) -> None:
        server_side = route.connect_to_server()

        async def to_page(message: str | bytes) -> None:
            if isinstance(message, str) and json.loads(message).get("type") == "answer":
                await release.wait()
            route.send(message)

        def to_server(message: str | bytes) -> None:
            # Chromium signals only its non-loopback addresses (never its loopback candidate,
            # which the server learns from Chromium's first check): keep the server from sending
            # checks off loopback. Their end-of-candidates, when it comes before that first
            # check, makes aioice fail at once (about 1 run in 10, a server bug reported
            # separately); this test is about the snapshot, not that race.
            if isinstance(message, str) and json.loads(message).get("type") == "candidate":
                return
            server_side.send(message)

        route.on_message(to_server)
        server_side.on_message(to_page)

    page = await open_page(browser, FIRST_PICTURE_JS)
    await page.route_web_socket("**/ws", hold_answer)
    async with page.expect_response(lambda r: "/snapshot.jpg" in r.url) as response_info:
        await page.goto(str(server.make_url("/")))
    response = await response_info.value
    assert response.ok
    assert response.headers["content-type"] == "image/jpeg"

    await wait_for(
        page,
        "() => window.__firstPicture.canvasAt !== null",
        timeout_s=10,
        what="the snapshot drawn on the canvas",
    )
    canvas = await read_live_canvas(page)
    # The first picture is light (320 px, quality 50) so it never holds up a slow link.
    assert (canvas["width"], canvas["height"]) == (320, 240)
    assert max(canvas["pixel"]) > 64, f"pixel at 5/8 of the canvas is black: {canvas['pixel']}"
    shown = await page.evaluate(
        f"() => {{ const el = {ELEMENT}; "
        "return { mode: el.info.mode, state: el.dataset.state, hidden: el.canvas.hidden }; }"
    )
    assert shown == {"mode": "WebRTC", "state": "connecting", "hidden": False}

    release.set()
    await wait_for(
        page,
        f"""() => {ELEMENT}.dataset.state === "playing"
            && window.__firstPicture.videoAt !== null""",
        timeout_s=10,
        what="WebRTC video playing after the answer",
    )
    info = await page.evaluate(f"() => {ELEMENT}.info")
    assert info["mode"] == "WebRTC"
    assert info["fallbackReason"] is None
    assert await page.evaluate(f"() => {ELEMENT}.canvas.hidden"), "snapshot still over the video"
    assert not service_of(server).fallbacks


async def open_failed_forced_webrtc(
    browser: Browser, server: TestServer
) -> tuple[Page, list[dict[str, Any]]]:
    """Open ?mode=webrtc on a JPEG-only ``server``; return once its fallback deadline is past."""
    page = await open_page(browser)
    sent = record_signaling(page)
    await page.goto(str(server.make_url("/?mode=webrtc&fallback-after=1")))
    failed_at = await wait_for(
        page,
        f'() => {ELEMENT}.dataset.state === "failed" ? performance.now() : null',
        timeout_s=10,
        what="data-state == failed",
    )
    # Not synchronisation: what these tests check is that nothing replaces the failure once the
    # 1 s deadline (armed before the offer went out) has passed.
    await wait_for(
        page,
        f"() => performance.now() > {failed_at} + 2000",
        timeout_s=10,
        what="2 s after the failure",
    )
    return page, sent


@pytest.mark.browser
async def test_forced_webrtc_never_falls_back(browser: Browser, make_server: ServerFactory) -> None:
    """?mode=webrtc is for diagnosing WebRTC: a silent switch to JPEG would hide the problem."""
    server = await make_server(webrtc=False)
    page, sent = await open_failed_forced_webrtc(browser, server)
    info = await page.evaluate(f"() => {ELEMENT}.info")
    assert info["mode"] == "WebRTC"
    assert info["state"] == "failed"
    assert info["error"]
    assert info["fallbackReason"] is None
    assert info["framesDrawn"] == 0
    assert await page.evaluate(
        f'() => {ELEMENT}.shadowRoot.querySelector(".overlay").classList.contains("error")'
    )
    assert "jpeg" not in [m["type"] for m in sent], sent
    assert not service_of(server).fallbacks
    assert not service_of(server).jpeg_streams


@pytest.mark.browser
async def test_forced_webrtc_error_names_the_cause(
    browser: Browser, make_server: ServerFactory
) -> None:
    """Whoever forced WebRTC wants to read why it failed, not a follow-on error."""
    server = await make_server(webrtc=False)
    page, _ = await open_failed_forced_webrtc(browser, server)
    info = await page.evaluate(f"() => {ELEMENT}.info")
    assert "webrtc-disabled" in info["error"], info
    overlay = await page.evaluate(
        f'() => {ELEMENT}.shadowRoot.querySelector(".overlay").textContent'
    )
    assert "webrtc-disabled" in overlay, overlay


@pytest.mark.browser
async def test_capture_page_draws_frames(browser: Browser, server: TestServer) -> None:
    """Clients of the original board load /capture: it must keep working unchanged."""
    page = await open_page(browser)
    await page.goto(str(server.make_url("/capture")))
    await wait_for(
        page,
        "() => Number(document.body.dataset.frames) > 30",
        timeout_s=10,
        what="more than 30 frames drawn",
    )
    size = await page.evaluate(
        '() => { const c = document.getElementById("canvas"); return [c.width, c.height]; }'
    )
    assert size == [640, 480]
