"""The page in a real browser: headless Chromium plays peercam's WebRTC stream on loopback.

One Chromium per module (a launch costs about a second), a fresh browser context per test. The
browser, the servers and the tests share the module's event loop: Playwright's connection and
aiohttp's server are both bound to the loop that started them, so these tests use their own
server fixtures instead of conftest's function-loop ones.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from signaling.app import create_app
from tests.browser import TIMEBAR_JS
from tests.conftest import LOOPBACK_CONFIG, eventually, service_of
from webrtc.extensions import PLAYOUT_DELAY_URI, TRANSPORT_CC_URI
from webrtc.sources import TestPatternSource

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CODECS = ("vp8", "h264")
MIME_TYPES = {"vp8": "video/VP8", "h264": "video/H264"}

# Installed before the page's own scripts. getStats() is async and wait_for_function does not
# await promises, so the harness keeps the latest figures of the element's *current* peer
# connection in a plain object the predicates can read synchronously; it also records every
# data-state the element goes through and when the first video frame reached the screen.
HARNESS_JS = """
(() => {
  const harness = { stats: null, states: [], firstFrame: null, log: [] };
  window.__peercam = harness;
  // The element logs through console.debug: keep the tail for failure messages.
  const debug = console.debug.bind(console);
  console.debug = (...args) => {
    harness.log.push(`${performance.now().toFixed(0)} ms ${args.join(" ")}`);
    harness.log.splice(0, harness.log.length - 30);
    debug(...args);
  };
  customElements.whenDefined("peercam-view").then(() => {
    const el = document.querySelector("peercam-view");
    if (!el) return;
    const record = () => harness.states.push(el.dataset.state);
    new MutationObserver(record).observe(el, { attributeFilter: ["data-state"] });
    record();
    el.video.requestVideoFrameCallback((now, meta) => {
      harness.firstFrame = { sinceNavigationMs: now, epochMs: performance.timeOrigin + now,
                             width: meta.width, height: meta.height };
    });
    const poll = async () => {
      const pc = el.peerConnection;
      if (!pc) return;
      try {
        const report = await pc.getStats();
        report.forEach((r) => {
          if (r.type === "inbound-rtp" && r.kind === "video") {
            harness.stats = { pc, framesDecoded: r.framesDecoded || 0,
                              mimeType: report.get(r.codecId)?.mimeType ?? null };
          }
        });
      } catch (e) {
        // A connection closed between the check and getStats(): the next poll sees the new one.
      }
    };
    setInterval(poll, 100);
  });
})();
"""

# Draws the current video frame into a canvas at its natural size and reads it: a pixel in each
# colour bar, and the capture-time bar decoded as webrtc/timebar.py read() does (64 blocks of
# max(4, width // 80) pixels from x=size, y=size//2; the middle half of each block averaged over
# R, G and B, white above 128; 48 bits of ms then CRC-32 of those 6 big-endian bytes & 0xFFFF).
SNAPSHOT_JS = (
    """
() => {
"""
    + TIMEBAR_JS
    + """
  const video = document.querySelector("peercam-view").video;
  const width = video.videoWidth, height = video.videoHeight;
  if (!width || !height) return null;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(video, 0, 0, width, height);
  const data = ctx.getImageData(0, 0, width, height).data;
  const rgb = (x, y) => Array.from(data.slice((y * width + x) * 4, (y * width + x) * 4 + 3));

  const barMillis = readTimebar(data, width, height);
  // The centres of the seven colour bars, below the text boxes (the white square may cover one).
  const bars = [0, 1, 2, 3, 4, 5, 6].map((i) =>
    rgb(Math.floor(((i + 0.5) * width) / 7), Math.floor((height * 5) / 8)));
  return { width, height, bars, barMillis, now: Date.now(),
           png: barMillis === null ? null : canvas.toDataURL("image/png") };
}
"""
)

# What the page was doing when a wait timed out: enough to tell signaling, ICE and decoding apart.
DIAGNOSIS_JS = """
async () => {
  const harness = window.__peercam;
  const el = document.querySelector("peercam-view");
  const pc = el?.peerConnection;
  const result = { states: harness?.states, info: el?.info, log: harness?.log,
                   stats: harness?.stats && { ...harness.stats, pc: undefined } };
  if (pc) {
    result.pc = { connection: pc.connectionState, ice: pc.iceConnectionState,
                  gathering: pc.iceGatheringState, signaling: pc.signalingState, ice_pairs: [] };
    const report = await pc.getStats();
    const address = (id) => {
      const c = report.get(id);
      return c && `${c.candidateType} ${c.protocol} ${c.address}:${c.port}`;
    };
    report.forEach((r) => {
      if (r.type === "candidate-pair") {
        result.pc.ice_pairs.push(`${address(r.localCandidateId)} -> ${address(r.remoteCandidateId)}`
          + ` ${r.state} sent=${r.requestsSent} received=${r.responsesReceived}`);
      }
    });
  }
  return result;
}
"""

ServeFn = Callable[..., Awaitable[TestServer]]


@pytest_asyncio.fixture(loop_scope="module")
async def page(module_browser: Browser) -> AsyncIterator[Page]:
    """A fresh context of the module's Chromium (no shared cache or state) with the harness
    installed."""
    context = await module_browser.new_context(viewport={"width": 800, "height": 600})
    await context.add_init_script(HARNESS_JS)
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def serve() -> AsyncIterator[ServeFn]:
    """Start peercam servers on 127.0.0.1 in the module's loop; all are closed after the test."""
    servers: list[TestServer] = []

    async def start(port: int = 0) -> TestServer:
        app = create_app(LOOPBACK_CONFIG, source=TestPatternSource())
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest_asyncio.fixture(loop_scope="module")
async def server(serve: ServeFn) -> TestServer:
    """One peercam server with a 640x480 test pattern."""
    return await serve()


async def wait_for(page: Page, predicate: str, *, timeout_s: float, what: str) -> Any:
    """Wait until the JS expression ``predicate`` is truthy; fail saying what did not happen."""
    try:
        handle = await page.wait_for_function(predicate, timeout=timeout_s * 1000)
    except PlaywrightTimeoutError:
        state = await page.evaluate(DIAGNOSIS_JS)
        pytest.fail(f"not within {timeout_s:g} s: {what}; page: {state}")
    return await handle.json_value()


async def open_playing(page: Page, url: str, *, frames: int = 30) -> dict[str, Any]:
    """Load ``url``; wait until the element plays WebRTC and has decoded more than ``frames``."""
    await page.goto(url)
    await wait_for(
        page,
        '() => document.querySelector("peercam-view")?.dataset.state === "playing"',
        timeout_s=10,
        what="data-state == playing",
    )
    # "playing" is also what the JPEG fallback reaches: these tests are about WebRTC.
    info = await page.evaluate('() => document.querySelector("peercam-view").info')
    assert info["mode"] == "WebRTC", f"fell back instead of playing WebRTC: {info}"
    stats: dict[str, Any] = await wait_for(
        page,
        f"""() => {{
            const s = window.__peercam.stats;
            return s && s.framesDecoded > {frames}
                ? {{ framesDecoded: s.framesDecoded, mimeType: s.mimeType }} : null;
        }}""",
        timeout_s=15,
        what=f"framesDecoded > {frames}",
    )
    return stats


@pytest.mark.parametrize("codec", CODECS)
async def test_page_plays_the_test_pattern(page: Page, server: TestServer, codec: str) -> None:
    """The whole path works in a real browser: signaling, ICE, DTLS, decode, and real pixels."""
    stats = await open_playing(page, str(server.make_url(f"/?codec={codec}")))
    assert stats["mimeType"] == MIME_TYPES[codec]

    snapshot = await wait_for(
        page,
        f"() => {{ const s = ({SNAPSHOT_JS})(); return s && s.barMillis !== null ? s : null; }}",
        timeout_s=5,
        what="a frame whose capture-time bar decodes",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    png = base64.b64decode(snapshot.pop("png").removeprefix("data:image/png;base64,"))
    (ARTIFACTS / f"browser-{codec}-frame.png").write_bytes(png)
    assert (snapshot["width"], snapshot["height"]) == (640, 480)
    bars = snapshot["bars"]
    assert all(max(rgb) > 64 for rgb in bars), f"a colour bar is black: {bars}"
    # Seven different colours (one may hide behind the white square), not a uniform picture.
    assert len({tuple(channel // 64 for channel in rgb) for rgb in bars}) >= 5, bars
    assert abs(snapshot["now"] - snapshot["barMillis"]) < 5000, snapshot

    await page.screenshot(path=ARTIFACTS / f"browser-{codec}.png")


async def test_chromium_acknowledges_padding_and_goes_on_estimating(
    page: Page, server: TestServer
) -> None:
    """Chromium negotiates playout delay and transport-wide sequence numbers, acknowledges
    numbered padding packets with their arrival times, and goes on sending its estimate (REMB)
    for the media, which carry none (webrtc/feedback.py)."""
    await open_playing(page, str(server.make_url("/?codec=vp8")))
    sdp = await page.evaluate(
        '() => document.querySelector("peercam-view").peerConnection.remoteDescription.sdp'
    )
    assert PLAYOUT_DELAY_URI in sdp
    assert TRANSPORT_CC_URI in sdp
    [peer] = service_of(server).peers.peers()
    padding, controller = peer._padding, peer._controller
    assert padding is not None
    assert controller is not None
    delays = padding.delays
    assert delays is not None, "the padding is not numbered: transport-cc not negotiated"
    rembs = controller.rembs
    await padding.send(30)
    await eventually(lambda: delays.acknowledged >= 30, timeout=10)
    assert delays.malformed == 0
    queue = delays.queue()
    assert queue is not None
    assert 0 <= queue < 1.0  # loopback: no standing queue
    await eventually(lambda: controller.rembs > rembs, timeout=10)


async def test_between_probes_chromium_acknowledges_the_sonar(
    page: Page, server: TestServer
) -> None:
    """A viewer on the top rung is never padded, but its numbered sonar packets (a few bytes
    of padding every 50 ms, webrtc/padding.py) come back acknowledged, and the controller
    reads the queue in its path from them (none on loopback)."""
    await open_playing(page, str(server.make_url("/?codec=vp8")))
    [peer] = service_of(server).peers.peers()
    padding, controller = peer._padding, peer._controller
    assert padding is not None
    assert controller is not None
    delays = padding.delays
    assert delays is not None
    acknowledged = delays.acknowledged
    await eventually(lambda: delays.acknowledged >= acknowledged + 20, timeout=15)
    assert controller.index == 0
    assert controller.padding == 0  # no probe: what came back is the sonar
    latest = delays.latest()
    assert latest is not None
    assert 0 <= latest[1] < 1.0


@pytest.mark.parametrize("codec", CODECS)
async def test_overlay_names_mode_codec_and_size(
    page: Page, server: TestServer, codec: str
) -> None:
    """The overlay is what a person looks at to tell how they are watching."""
    await open_playing(page, str(server.make_url(f"/?codec={codec}")), frames=0)
    text = await wait_for(
        page,
        """() => {
            const el = document.querySelector("peercam-view");
            const text = el.shadowRoot.querySelector(".overlay").textContent;
            return text.includes("640×480") ? text : null;
        }""",
        timeout_s=5,
        what="the overlay shows the video size",
    )
    assert "WebRTC" in text
    assert codec.upper() in text


async def test_video_element_can_autoplay_inline(page: Page, server: TestServer) -> None:
    """Browsers only autoplay muted video, and iOS needs playsinline to not go fullscreen."""
    await open_playing(page, str(server.make_url("/")), frames=0)
    video = await page.evaluate(
        """() => {
            const v = document.querySelector("peercam-view").shadowRoot.querySelector("video");
            return { autoplay: v.hasAttribute("autoplay"), muted: v.hasAttribute("muted"),
                     playsinline: v.hasAttribute("playsinline"), mutedNow: v.muted,
                     paused: v.paused };
        }"""
    )
    assert video == {
        "autoplay": True,
        "muted": True,
        "playsinline": True,
        "mutedNow": True,
        "paused": False,
    }


async def test_page_reconnects_after_server_restart(
    page: Page, server: TestServer, serve: ServeFn
) -> None:
    """A server restart (upgrade, crash) must not leave wall-mounted screens black for good."""
    await open_playing(page, str(server.make_url("/")), frames=0)
    await page.evaluate("() => { window.__firstPc = window.__peercam.stats.pc; }")
    port = server.port
    assert port is not None
    await server.close()
    await serve(port=port)

    await wait_for(
        page,
        """() => {
            const el = document.querySelector("peercam-view");
            const s = window.__peercam.stats;
            return el.dataset.state === "playing" && el.dataset.mode === "WebRTC"
                && el.peerConnection === s?.pc
                && s.pc !== window.__firstPc && s.framesDecoded > 30;
        }""",
        timeout_s=20,
        what="playing again on a new peer connection",
    )
    states: list[str] = await page.evaluate("() => window.__peercam.states")
    assert any(state.startswith("reconnecting") for state in states), states


# Fault injection, not synchronisation: the answer reaches the browser's RTCPeerConnection
# half a second late (a slow link), so its first ICE check comes after its end-of-candidates.
SLOW_ANSWER_JS = """
(() => {
  const apply = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (...args) {
    return new Promise((resolve) => setTimeout(resolve, 500)).then(() => apply.apply(this, args));
  };
})();
"""


async def test_plays_when_end_of_candidates_precedes_the_first_check(
    page: Page, server: TestServer
) -> None:
    """A browser that signals no usable candidate (mDNS, loopback) must still connect."""
    await page.add_init_script(SLOW_ANSWER_JS)
    await open_playing(page, str(server.make_url("/")), frames=0)


@pytest.mark.parametrize("codec", CODECS)
async def test_time_to_first_frame(module_browser: Browser, server: TestServer, codec: str) -> None:
    """How long a viewer stares at black after opening the page; recorded for the docs."""
    samples = []
    for _ in range(3):  # fresh contexts: nothing cached between samples
        context = await module_browser.new_context()
        try:
            await context.add_init_script(HARNESS_JS)
            page = await context.new_page()
            started_ms = time.time() * 1000
            await page.goto(str(server.make_url(f"/?codec={codec}")))
            first = await wait_for(
                page,
                "() => window.__peercam.firstFrame",
                timeout_s=10,
                what="the first video frame on screen",
            )
        finally:
            await context.close()
        samples.append(
            {
                "goto_to_first_frame_ms": round(first["epochMs"] - started_ms, 1),
                "navigation_to_first_frame_ms": round(first["sinceNavigationMs"], 1),
                "frame_size": [first["width"], first["height"]],
            }
        )
    totals = [s["goto_to_first_frame_ms"] for s in samples]
    assert max(totals) < 10_000, samples

    ARTIFACTS.mkdir(exist_ok=True)
    record = {
        "codec": codec,
        "browser": module_browser.version,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "median_goto_to_first_frame_ms": statistics.median(totals),
        "samples": samples,
    }
    (ARTIFACTS / f"browser-time-to-first-frame-{codec}.json").write_text(
        json.dumps(record, indent=2) + "\n"
    )
