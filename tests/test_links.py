"""Live on every link: real Chromium viewers behind shaped, lossy and cut links (tests/netlab.py).

Bounds are generous (2 busy cores); the figures per link profile are in bench/links.py and
docs/performance.md.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Page, Playwright

from tests.aiortc_viewer import AiortcViewer
from tests.browser import wait_for
from tests.conftest import ServerFactory, eventually, service_of, ws_url
from tests.netlab import (
    PICTURE_AGE_JS,
    ViewerNet,
    chromium_in,
    lab_url,
    picture_samples,
    picture_stats,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

INFO_JS = '() => document.querySelector("peercam-view")?.info'


async def _open(page: Page, url: str) -> None:
    await page.goto(url)
    await wait_for(
        page,
        "() => window.__bench?.video.length > 15",
        timeout_s=20,
        what="WebRTC video presented",
        diagnosis_js=INFO_JS,
    )


async def _playing(page: Page, mode: str, timeout_s: float, what: str) -> Any:
    """The element's info once it plays in ``mode`` ("WebRTC" or "JPEG")."""
    return await wait_for(
        page,
        f"""() => {{ const i = document.querySelector("peercam-view").info;
                    return i.mode === "{mode}" && i.state === "playing" ? i : null; }}""",
        timeout_s=timeout_s,
        what=what,
        diagnosis_js=INFO_JS,
    )


async def _moved_down(context: BrowserContext, server: TestServer, net: ViewerNet) -> Page:
    """A page of the lab's Chromium, once its viewer (on a slow link) left the top rung."""
    page = await context.new_page()
    await page.goto(lab_url(server, net, "/?codec=vp8"))
    await wait_for(
        page,
        '() => document.querySelector("peercam-view")?.dataset.rung > "0"',
        timeout_s=25,
        what="the slow viewer moved down the ladder",
        diagnosis_js=INFO_JS,
    )
    return page


async def _window(page: Page, seconds: float) -> Any:
    """Picture figures over the next ``seconds`` (the page's own clock, via its samples)."""
    start = time.time()
    # Waiting for the window to pass is the measurement itself, driven by the page's frames.
    await page.wait_for_timeout(seconds * 1000)
    return picture_stats(await picture_samples(page), start, time.time())


async def test_a_slow_viewer_stays_live_while_a_clean_one_keeps_the_top_rung(
    make_server: ServerFactory, viewer_net: ViewerNet, playwright: Playwright
) -> None:
    """300 kbit/s: the slow viewer moves down the ladder and its picture keeps moving; a clean
    viewer at the same time stays on the top rung at full size."""
    server = await make_server(
        host="0.0.0.0", ice_addresses=(viewer_net.server_address, "127.0.0.1")
    )
    clean = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    await viewer_net.set_rate(300)
    try:
        await clean.connect()
        async with chromium_in(viewer_net, playwright) as browser:
            context = await browser.new_context(viewport={"width": 800, "height": 600})
            await context.add_init_script(PICTURE_AGE_JS)
            page = await _moved_down(context, server, viewer_net)
            stats = await _window(page, 6.0)
            info = await page.evaluate(INFO_JS)
            peers = [p.stats() for p in service_of(server).peers.peers()]
            await context.close()
        assert info["mode"] == "WebRTC", info
        assert stats.frames > 0, stats
        assert stats.longest_freeze_s < 2.0, stats  # new pictures at least every 2 s
        top = [p for p in peers if p["rungIndex"] == 0]
        assert len(top) == 1, (peers, clean.received)  # the clean viewer
        assert (clean.received.width, clean.received.height) == (640, 480)
        frames = clean.received.frames
        await clean.wait_frames(frames + 30, timeout=10)
    finally:
        await clean.close()


async def test_cut_media_shows_stalled_then_jpeg_and_webrtc_comes_back(
    make_server: ServerFactory, viewer_net: ViewerNet, playwright: Playwright
) -> None:
    """No UDP: the page never says "playing" over a frozen picture; it asks for a keyframe,
    renegotiates, falls back to JPEG ("stalled"), and retries WebRTC once the link is back."""
    server = await make_server(host="0.0.0.0", ice_addresses=(viewer_net.server_address,))
    async with chromium_in(viewer_net, playwright) as browser:
        page = await browser.new_page()
        await page.add_init_script(PICTURE_AGE_JS)
        await _open(page, lab_url(server, viewer_net, "/?fallback-after=3&webrtc-retry=4"))
        await viewer_net.block_udp(True)
        await wait_for(
            page,
            '() => document.querySelector("peercam-view").info.state === "stalled"',
            timeout_s=10,
            what="the overlay says stalled",
            diagnosis_js=INFO_JS,
        )
        info = await _playing(page, "JPEG", 25, "JPEG pictures after the stall")
        assert info["fallbackReason"] == "stalled", info
        assert info["renegotiations"] == 1, info
        assert service_of(server).fallbacks["stalled"] == 1
        await viewer_net.block_udp(False)
        info = await _playing(page, "WebRTC", 30, "WebRTC again after the link recovered")
        assert info["fallbackReason"] is None, info
    await eventually(lambda: len(service_of(server).peers) == 0, timeout=15)


async def test_five_percent_loss_keeps_the_picture_moving(
    make_server: ServerFactory, viewer_net: ViewerNet, playwright: Playwright
) -> None:
    """Random loss: retransmissions and keyframes keep the picture going."""
    server = await make_server(host="0.0.0.0", ice_addresses=(viewer_net.server_address,))
    async with chromium_in(viewer_net, playwright) as browser:
        page = await browser.new_page()
        await page.add_init_script(PICTURE_AGE_JS)
        await _open(page, lab_url(server, viewer_net, "/"))
        await viewer_net.set_loss(5)
        stats = await _window(page, 6.0)
        info = await page.evaluate(INFO_JS)
    assert info["mode"] == "WebRTC", info
    assert stats.fps > 5, stats
    assert stats.longest_freeze_s < 2.0, stats


@pytest.mark.timeout(180)
async def test_a_viewer_whose_link_recovers_climbs_back_through_padding_probes(
    make_server: ServerFactory, viewer_net: ViewerNet, playwright: Playwright
) -> None:
    """300 kbit/s, then the link is clean again: Chromium's viewer climbs back to the top rung,
    each step up after a padding probe the link carried (webrtc/padding.py), its picture never
    switched to a rung for probing."""
    server = await make_server(host="0.0.0.0", ice_addresses=(viewer_net.server_address,))
    await viewer_net.set_rate(300)
    async with chromium_in(viewer_net, playwright) as browser:
        context = await browser.new_context(viewport={"width": 800, "height": 600})
        page = await _moved_down(context, server, viewer_net)
        await viewer_net.set_rate(None)
        reasons: set[str] = set()

        def on_top() -> bool:
            [peer] = [p.stats() for p in service_of(server).peers.peers()]
            reasons.add(str(peer["rungReason"]))
            return peer["rungIndex"] == 0

        # Two or three probes of ~4 s, 1.5-5 s apart: a generous bound for a busy machine.
        await eventually(on_top, timeout=90)
        [peer] = [p.stats() for p in service_of(server).peers.peers()]
        info = await page.evaluate(INFO_JS)
        await context.close()
    assert isinstance(peer["paddingBytes"], int)
    assert peer["paddingBytes"] > 10_000, peer
    assert any(r.startswith("padding probe held") for r in reasons), reasons
    assert not any(r == "probing" for r in reasons), reasons  # no switch probe
    assert info["mode"] == "WebRTC", info
