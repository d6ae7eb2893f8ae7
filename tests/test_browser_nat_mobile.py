"""Across NAT and on phones, in a real browser: Chromium through coturn, emulated phones, /check.

Same set-up as test_browser_fallback.py: conftest's ``make_server`` servers and a Chromium
launched per test, all in the test's own event loop. coturn (tests/turn.py) runs on loopback;
every test that uses it closes the peercam server before coturn stops, so that aioice releases
its allocations while coturn still answers instead of retrying against a dead one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import (
    Browser,
    FloatRect,
    Page,
    Playwright,
    ViewportSize,
)

from tests.browser import wait_for as wait_for_page
from tests.conftest import ServerFactory
from tests.turn import Turn, coturn
from webrtc.ice import IceServer

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

ELEMENT = 'document.querySelector("peercam-view")'

SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15"
)

# The machine is shared with other test runs: a page that needs more than the default 5 s to
# show its first WebRTC frame must fail these tests on their own bounds, not fall back to JPEG.
SLOW_MACHINE = "fallback-after=30"

# Installed before the page's scripts. getStats() is async and wait_for_function does not await
# promises, so the figures of the element's current peer connection are kept in a plain object
# the predicates read synchronously: frames decoded, the codec, the frame size, and the two
# candidates of the selected pair.
STATS_JS = """
(() => {
  const harness = { stats: null, error: null };
  window.__peercam = harness;
  const candidate = (c) => c && { candidateType: c.candidateType, protocol: c.protocol,
                                  relayProtocol: c.relayProtocol ?? null,
                                  address: c.address, port: c.port };
  const poll = async () => {
    const pc = document.querySelector("peercam-view")?.peerConnection;
    if (!pc) return;
    const report = await pc.getStats();
    const stats = { framesDecoded: 0, frameWidth: null, frameHeight: null, mimeType: null,
                    local: null, remote: null };
    report.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") {
        stats.framesDecoded = r.framesDecoded || 0;
        stats.frameWidth = r.frameWidth ?? null;
        stats.frameHeight = r.frameHeight ?? null;
        stats.mimeType = report.get(r.codecId)?.mimeType ?? null;
      } else if (r.type === "transport" && r.selectedCandidatePairId) {
        const pair = report.get(r.selectedCandidatePairId);
        stats.local = candidate(report.get(pair?.localCandidateId)) ?? null;
        stats.remote = candidate(report.get(pair?.remoteCandidateId)) ?? null;
      }
    });
    harness.stats = stats;
  };
  // A connection closed between the check and getStats() throws: the next poll sees the new one.
  setInterval(() => poll().catch((e) => { harness.error = String(e); }), 100);
})();
"""

# Autoplay refused, as iOS in Low Power Mode does even for muted inline video: the browser
# ignores the autoplay attribute and rejects the page's first play(); a play() from a tap works.
REFUSE_AUTOPLAY_JS = """
(() => {
  const seen = { refused: 0, allowed: 0 };
  window.__autoplay = seen;
  const play = HTMLMediaElement.prototype.play;
  HTMLMediaElement.prototype.play = function () {
    if (seen.refused === 0) {
      seen.refused += 1;
      return Promise.reject(new DOMException("play() needs a user gesture", "NotAllowedError"));
    }
    seen.allowed += 1;
    return play.call(this);
  };
  const srcObject = Object.getOwnPropertyDescriptor(HTMLMediaElement.prototype, "srcObject");
  Object.defineProperty(HTMLMediaElement.prototype, "srcObject", {
    ...srcObject,
    set(value) {
      this.autoplay = false;
      srcObject.set.call(this, value);
    },
  });
})();
"""

DIAGNOSIS_JS = f"""
() => {{
  const el = {ELEMENT};
  return {{ info: el?.info, state: el?.dataset.state, stats: window.__peercam?.stats,
            statsError: window.__peercam?.error, autoplay: window.__autoplay,
            overlay: el?.shadowRoot.querySelector(".overlay").textContent,
            pc: el?.peerConnection && {{ connection: el.peerConnection.connectionState,
                                         ice: el.peerConnection.iceConnectionState }},
            check: window.results, advice: document.getElementById("advice")?.textContent }};
}}
"""

# The rectangle the picture really covers inside the <video> box (object-fit: contain).
RENDERED_VIDEO_JS = f"""
() => {{
  const video = {ELEMENT}.video;
  const box = video.getBoundingClientRect();
  const scale = Math.min(box.width / video.videoWidth, box.height / video.videoHeight);
  const width = video.videoWidth * scale, height = video.videoHeight * scale;
  return {{ x: box.x + (box.width - width) / 2, y: box.y + (box.height - height) / 2,
            width, height }};
}}
"""

PHONES = ("iPhone 13", "Pixel 7")


async def open_page(browser: Browser, *init_scripts: str, **context: Any) -> Page:
    """A page in a fresh context (closed with the browser) with ``init_scripts`` installed."""
    context.setdefault("viewport", {"width": 800, "height": 600})
    browser_context = await browser.new_context(**context)
    for script in init_scripts:
        await browser_context.add_init_script(script)
    return await browser_context.new_page()


async def wait_for(page: Page, predicate: str, *, timeout_s: float, what: str) -> Any:
    """Wait until the JS function ``predicate`` returns a truthy value, and return that value."""
    return await wait_for_page(
        page, predicate, timeout_s=timeout_s, what=what, diagnosis_js=DIAGNOSIS_JS
    )


async def wait_for_video(page: Page, frames: int = 30, *, timeout_s: float = 20) -> dict[str, Any]:
    """Wait until the element plays WebRTC and has decoded more than ``frames``; its stats."""
    stats: dict[str, Any] = await wait_for(
        page,
        f"""() => {{
            const el = {ELEMENT}, stats = window.__peercam.stats;
            return el?.dataset.state === "playing" && el.info.mode === "WebRTC"
                && stats?.framesDecoded > {frames} && stats.local ? stats : null;
        }}""",
        timeout_s=timeout_s,
        what=f"WebRTC playing, more than {frames} frames decoded",
    )
    return stats


def turn_server(turn: Turn, transport: str = "udp") -> IceServer:
    return IceServer((turn.url(transport),), "peer", "cam")


def inside(box: FloatRect | None, viewport: ViewportSize, slack: float = 0.5) -> bool:
    """Whether ``box`` lies entirely within the viewport (sub-pixel rounding allowed)."""
    return (
        box is not None
        and box["x"] >= -slack
        and box["y"] >= -slack
        and box["x"] + box["width"] <= viewport["width"] + slack
        and box["y"] + box["height"] <= viewport["height"] + slack
    )


@pytest.mark.browser
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_relay_only_chromium_plays_through_turn(
    browser: Browser, make_server: ServerFactory, transport: str
) -> None:
    """A viewer whose network allows no direct path (strict NAT, UDP blocked) still sees video."""
    async with coturn(user=("peer", "cam")) as turn:
        server = await make_server(ice_servers=(turn_server(turn, transport),))
        try:
            page = await open_page(browser, STATS_JS)
            await page.goto(str(server.make_url(f"/?relay=1&{SLOW_MACHINE}")))
            stats = await wait_for_video(page)
            assert stats["local"]["candidateType"] == "relay", stats
            if transport == "tcp":
                assert stats["local"]["relayProtocol"] == "tcp", stats
            config = await page.evaluate(f"() => {ELEMENT}.peerConnection.getConfiguration()")
            assert config["iceTransportPolicy"] == "relay"
        finally:
            await server.close()  # while coturn still runs: closing releases the allocations


@pytest.mark.browser
@pytest.mark.parametrize("orientation", ["portrait", "landscape"])
@pytest.mark.parametrize("device", PHONES)
async def test_phone_plays_full_screen_with_usable_controls(
    playwright: Playwright,
    browser: Browser,
    make_server: ServerFactory,
    device: str,
    orientation: str,
) -> None:
    """Most viewers watch on a phone: the video must fill the screen, the controls be tappable."""
    descriptor = playwright.devices[device]
    width, height = descriptor["viewport"]["width"], descriptor["viewport"]["height"]
    if orientation == "landscape":
        width, height = height, width
    viewport: ViewportSize = {"width": width, "height": height}
    # Taller than 720 lines, so that the iPhone's cap has something to cap.
    server = await make_server(pattern={"width": 1280, "height": 960})
    # Only the descriptor's screen and input: the iPhone's default browser is WebKit, but these
    # tests run Debian's Chromium.
    page = await open_page(
        browser,
        STATS_JS,
        viewport=viewport,
        user_agent=descriptor["user_agent"],
        device_scale_factor=descriptor["device_scale_factor"],
        is_mobile=descriptor["is_mobile"],
        has_touch=descriptor["has_touch"],
    )
    await page.goto(str(server.make_url(f"/?{SLOW_MACHINE}")))
    stats = await wait_for_video(page)
    if device.startswith("iPhone"):
        assert stats["mimeType"] == "video/H264", stats
        assert stats["frameHeight"] <= 720, stats
    else:
        assert stats["mimeType"] == "video/VP8", stats
        assert stats["frameHeight"] == 960, stats

    view = await page.locator("peercam-view").bounding_box()
    assert view == {"x": 0, "y": 0, **viewport}, view
    rendered = await page.evaluate(RENDERED_VIDEO_JS)
    assert inside(rendered, viewport), (rendered, viewport)
    assert rendered["width"] > 0.9 * viewport["width"] or (
        rendered["height"] > 0.9 * viewport["height"]
    ), (rendered, viewport)

    overlay = page.locator("peercam-view .overlay")
    assert await overlay.is_visible()
    overlay_box = await overlay.bounding_box()
    assert inside(overlay_box, viewport), (overlay_box, viewport)
    font_size = await overlay.evaluate("(e) => parseFloat(getComputedStyle(e).fontSize)")
    assert font_size >= 12, font_size

    button = page.locator("peercam-view .fullscreen")
    assert await button.is_visible()
    button_box = await button.bounding_box()
    assert button_box is not None
    assert button_box["width"] >= 44, button_box
    assert button_box["height"] >= 44, button_box
    assert inside(button_box, viewport), (button_box, viewport)
    assert overlay_box is not None
    assert overlay_box["x"] + overlay_box["width"] <= button_box["x"], (
        "the overlay covers the full-screen button",
        overlay_box,
        button_box,
    )

    # The overlay's rate needs two of its one-second samples: the kept screenshot should show it.
    await wait_for(page, f"() => {ELEMENT}.info.fps > 0", timeout_s=10, what="overlay fps > 0")
    ARTIFACTS.mkdir(exist_ok=True)
    slug = device.lower().replace(" ", "-")
    await page.screenshot(path=ARTIFACTS / f"mobile-{slug}-{orientation}.png")


@pytest.mark.browser
async def test_desktop_safari_gets_h264_at_720p(
    browser: Browser, make_server: ServerFactory
) -> None:
    """Safari decodes H.264 in hardware: it must get H.264, scaled to 720p from a 1080p camera."""
    server = await make_server(pattern={"width": 1920, "height": 1080})
    page = await open_page(
        browser, STATS_JS, user_agent=SAFARI_MAC, viewport={"width": 1280, "height": 800}
    )
    await page.goto(str(server.make_url(f"/?{SLOW_MACHINE}")))
    stats = await wait_for_video(page)
    assert stats["mimeType"] == "video/H264", stats
    size = await page.evaluate(f"() => {{ const v = {ELEMENT}.video; "
                               "return [v.videoWidth, v.videoHeight]; }")  # fmt: skip
    assert size == [1280, 720]


async def run_check(page: Page, server: TestServer) -> dict[str, Any]:
    """Open /check on ``server`` and wait for every path's result."""
    await page.goto(str(server.make_url("/check")))
    # Five paths, at most 8 s each when one fails.
    await wait_for(
        page, '() => document.body.dataset.done === "true"', timeout_s=60, what="/check done"
    )
    results: dict[str, Any] = await page.evaluate("() => window.results")
    rows = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("tr[data-path]")]
                  .map((row) => [row.dataset.path, row.dataset.status]))"""
    )
    assert rows == {path: result["status"] for path, result in results.items()}
    return results


@pytest.mark.browser
async def test_check_page_reports_direct_and_both_turn_transports(
    browser: Browser, make_server: ServerFactory
) -> None:
    """Whoever sets up a camera must learn which paths work from where they stand."""
    async with coturn(user=("peer", "cam")) as turn:
        server = await make_server(ice_servers=(turn_server(turn, "udp"),))
        try:
            page = await open_page(browser)
            results = await run_check(page, server)
            statuses = {path: result["status"] for path, result in results.items()}
            assert statuses == {
                "direct": "works",
                "stun": "skipped",
                "turn-udp": "works",
                "turn-tcp": "works",
                "turns": "skipped",
            }, results
            # Chromium's own side may be peer-reflexive: it does not signal its loopback address.
            assert results["direct"]["pair"]["local"] in ("host", "prflx"), results
            assert results["direct"]["pair"]["remote"] == "host", results
            assert results["turn-udp"]["pair"]["local"] == "relay", results
            assert results["turn-udp"]["pair"]["protocol"] == "udp", results
            # Configured with ?transport=udp only: the page asked coturn over TCP by itself.
            assert results["turn-tcp"]["pair"]["local"] == "relay", results
            assert results["turn-tcp"]["pair"]["protocol"] == "tcp", results
            advice = await page.locator("#advice").text_content()
            assert advice is not None
            assert "Direct connections work" in advice, advice
        finally:
            await server.close()  # while coturn still runs: closing releases the allocations


@pytest.mark.browser
async def test_check_page_does_not_count_the_servers_relay_as_direct(
    browser: Browser, make_server: ServerFactory
) -> None:
    """A relay-only server connects anyone; /check must not call that a direct path."""
    async with coturn(user=("peer", "cam")) as turn:
        server = await make_server(ice_servers=(turn_server(turn, "udp"),), relay_only=True)
        try:
            page = await open_page(browser)
            results = await run_check(page, server)
            direct = results["direct"]
            assert direct["status"] == "fails", results
            # On loopback nothing connects: Chromium never signals its loopback candidate (the
            # server would learn it from Chromium's first check), and coturn drops that check,
            # as the server's relay has no permission for an address it was never told. Where
            # the browser's signalled address is reachable through the relay, the connection
            # works and the page must see the relay in the pair. Either way: "fails".
            if "pair" in direct:
                assert direct["pair"]["remote"] == "relay", results
                assert direct["detail"] == "only through the server's relay", results
            else:
                assert direct["detail"].startswith("no connection"), results
            assert results["turn-udp"]["status"] == "works", results
            assert results["turn-udp"]["pair"]["local"] == "relay", results
            advice = await page.locator("#advice").text_content()
            assert advice is not None
            assert "Direct connections work" not in advice, advice
            assert "TURN over UDP works" in advice, advice
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=ARTIFACTS / "check-relay-only.png", full_page=True)
        finally:
            await server.close()  # while coturn still runs: closing releases the allocations


@pytest.mark.browser
async def test_tap_to_play_starts_video_when_autoplay_is_refused(
    browser: Browser, make_server: ServerFactory
) -> None:
    """Phones in power-saving mode refuse autoplay: one tap must start the video, not nothing."""
    server = await make_server()
    page = await open_page(browser, STATS_JS, REFUSE_AUTOPLAY_JS, has_touch=True, is_mobile=True)
    await page.goto(str(server.make_url(f"/?{SLOW_MACHINE}")))
    # Video arrives and is decoded, but nothing may play it until the viewer taps.
    await wait_for(
        page,
        "() => window.__autoplay.refused === 1 && window.__peercam.stats?.framesDecoded > 5",
        timeout_s=20,
        what="autoplay refused and WebRTC frames decoded",
    )
    button = page.locator("peercam-view .play")
    assert await page.evaluate(f"() => {ELEMENT}.video.paused")
    assert await button.is_visible(), "no tap-to-play button while the video cannot play"
    assert await page.evaluate(f"() => {ELEMENT}.dataset.state") != "playing"

    await button.tap()
    await wait_for_video(page)
    assert await button.is_hidden()
    assert not await page.evaluate(f"() => {ELEMENT}.video.paused")
    assert await page.evaluate("() => window.__autoplay") == {"refused": 1, "allowed": 1}


@pytest.mark.browser
async def test_jpeg_fallback_shows_no_tap_to_play_button(
    browser: Browser, server: TestServer
) -> None:
    """A viewer moved to JPEG already sees pictures: a 'Tap to play' over them is a false alarm."""
    page = await open_page(browser)
    # ?relay=1 on a server without TURN: Chromium gathers no candidate, after the answer.
    await page.goto(str(server.make_url("/?relay=1&fallback-after=2")))
    await wait_for(
        page,
        f"""() => {{ const el = {ELEMENT};
                     return el?.dataset.state === "playing" && el.info.mode === "JPEG"
                         && el.info.framesDrawn > 5; }}""",
        timeout_s=15,
        what="fallen back to JPEG, more than 5 pictures drawn",
    )
    assert await page.evaluate(f"() => {ELEMENT}.info.fallbackReason") in ("no-video", "failed")
    assert await page.locator("peercam-view .play").is_hidden()
