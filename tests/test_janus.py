"""Fan-out through Janus: peercam feeds real Janus processes; viewers watch through Janus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser

from signaling.config import Config
from signaling.janus import FeedState, JanusFeed
from tests.aiortc_viewer import AiortcViewer, assert_serves_a_viewer
from tests.browser import wait_for
from tests.conftest import ServerFactory, eventually, service_of, ws_url
from tests.janus_lab import (
    JanusAiortcViewer,
    JanusApi,
    JanusServer,
    lab_veth,
    peercam_mountpoints,
)
from tests.test_metrics import scrape
from webrtc.encoders import Codec
from webrtc.rtp_out import RtpOutputError, first_of


@pytest.fixture(scope="session")
def janus_veth() -> Iterator[str]:
    with lab_veth() as veth:
        yield veth


@pytest.fixture
async def janus(janus_veth: str) -> AsyncIterator[JanusServer]:
    async with JanusServer(0, janus_veth) as server:
        yield server


@pytest.fixture
async def janus2(janus_veth: str) -> AsyncIterator[JanusServer]:
    async with JanusServer(1, janus_veth) as server:
        yield server


async def _status(server: TestServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(server.make_url("/api/status")) as r:
        status: dict[str, Any] = await r.json()
    return status


def _feeds(server: TestServer) -> list[JanusFeed]:
    return service_of(server).janus


async def _fed(server: TestServer, count: int = 1, timeout: float = 20.0) -> list[JanusFeed]:
    """Wait until ``count`` feeds are sending packets; they are returned."""

    def fed() -> bool:
        feeds = _feeds(server)
        return len(feeds) == count and all(
            f.state is FeedState.FEEDING and f.counters.packets > 0 for f in feeds
        )

    await eventually(fed, timeout)
    return _feeds(server)


async def test_an_aiortc_viewer_watches_peercam_through_janus(
    make_server: ServerFactory, janus: JanusServer
) -> None:
    """The whole path: peercam creates a public mountpoint by itself, feeds it RTP of its
    shared H.264 encoder, and a WebRTC viewer of Janus decodes it."""
    server = await make_server(janus=(janus.url,))
    (feed,) = await _fed(server)
    listed = await peercam_mountpoints(janus.url)
    assert [m["id"] for m in listed] == [feed.mountpoint.id if feed.mountpoint else None]
    async with JanusAiortcViewer(janus.url, listed[0]["id"]) as viewer:
        await viewer.wait_frames(10, timeout=20)
        assert (viewer.decoded.width, viewer.decoded.height) == (640, 480)
    encoders = service_of(server).encoders
    (key,) = encoders.running()
    assert key.codec is Codec.H264
    assert encoders.users(key) == 1  # the feed's lease


async def test_a_pli_from_a_janus_viewer_reaches_the_shared_encoder(
    make_server: ServerFactory, janus: JanusServer
) -> None:
    """A Janus viewer that lost its picture gets a keyframe from peercam's encoder: Janus
    forwards the PLI to the feed's RTCP socket."""
    server = await make_server(janus=(janus.url,))
    (feed,) = await _fed(server)
    assert feed.mountpoint is not None
    async with JanusAiortcViewer(janus.url, feed.mountpoint.id) as viewer:
        await viewer.wait_frames(5, timeout=20)
        (encoder,) = service_of(server).encoders.running().values()
        requests, forced = feed.counters.keyframe_requests, encoder.forced_keyframes
        # Janus passes on at most one keyframe request a second, and asks for one itself when
        # a viewer starts: two more than before can only be the viewer's PLIs.
        async with asyncio.timeout(15):
            while (seen := feed.counters.keyframe_requests) < requests + 2:
                await viewer.send_pli()
                with contextlib.suppress(TimeoutError):
                    await eventually(lambda: feed.counters.keyframe_requests > seen, 0.6)
        assert feed.counters.keyframe_requests >= requests + 2
        await eventually(lambda: encoder.forced_keyframes > forced, 5)
        # /metrics shows the output: its state, packets and the keyframe requests it passed on.
        metrics = await scrape(server)

        def value(name: str, **labels: str) -> float:
            return metrics.value(name, None, camera="default", janus=janus.url, **labels)

        assert value("peercam_janus_state", state="feeding") == 1
        assert value("peercam_janus_state", state="retrying") == 0
        assert value("peercam_janus_packets_total") > 0
        assert value("peercam_janus_keyframe_requests_total") >= requests + 2


async def test_a_late_joiner_through_janus_decodes_promptly(
    make_server: ServerFactory, janus: JanusServer
) -> None:
    """A viewer joining a running stream starts at once: Janus replays the last keyframe
    (``bufferkf``) and asks peercam for a new one."""
    server = await make_server(janus=(janus.url,))
    (feed,) = await _fed(server)
    await eventually(lambda: feed.counters.frames > 60, 15)  # two seconds into the stream
    assert feed.mountpoint is not None
    async with JanusAiortcViewer(janus.url, feed.mountpoint.id) as viewer:
        await viewer.wait_frames(1, timeout=10)
        assert viewer.decoded.first_frame_at is not None
        assert viewer.decoded.first_frame_at - viewer.started_at < 8  # generous, not a figure


async def test_janus_restarted_mid_stream_is_fed_again_without_disturbing_viewers(
    make_server: ServerFactory, janus: JanusServer
) -> None:
    """Janus going away and coming back is peercam's business alone: the feed notices, makes
    a new mountpoint on the new Janus, and its own viewers never see a gap."""
    server = await make_server(janus=(janus.url,))
    (feed,) = await _fed(server)
    direct = AiortcViewer(ws_url(server), decode_bar=False, codec="h264")
    try:
        await direct.connect()
        await direct.wait_frames(5, timeout=15)
        await janus.restart()
        await eventually(lambda: feed.connects >= 2 and feed.state is FeedState.FEEDING, 30)
        assert feed.failures >= 1
        (listed,) = await peercam_mountpoints(janus.url)
        assert feed.mountpoint is not None
        assert listed["id"] == feed.mountpoint.id
        async with JanusAiortcViewer(janus.url, listed["id"]) as viewer:
            await viewer.wait_frames(5, timeout=20)
        frames = direct.received.frames
        await direct.wait_frames(frames + 10, timeout=10)  # the page's viewer carried on
    finally:
        await direct.close()


async def test_a_janus_that_is_not_up_yet_is_fed_once_it_is(
    make_server: ServerFactory, janus_veth: str
) -> None:
    """peercam may start before Janus: the feed retries with backoff, page viewers are served
    meanwhile, and the mountpoint appears once Janus is up."""
    async with contextlib.AsyncExitStack() as stack:
        janus = JanusServer(2, janus_veth)
        stack.push_async_callback(janus.__aexit__, None, None, None)
        server = await make_server(janus=(janus.url,))
        (feed,) = _feeds(server)
        await eventually(lambda: feed.failures >= 2, 15)
        assert feed.state is not FeedState.FEEDING
        assert "create" in feed.last_error
        await assert_serves_a_viewer(ws_url(server))
        await janus.start()
        await _fed(server)
        (listed,) = await peercam_mountpoints(janus.url)
        assert feed.mountpoint is not None
        assert listed["id"] == feed.mountpoint.id


async def test_a_mountpoint_destroyed_on_a_running_janus_is_made_again(
    make_server: ServerFactory, janus: JanusServer
) -> None:
    """Someone destroys peercam's mountpoint (Janus stays up, the session lives): the RTP
    socket's "port unreachable" makes the feed look, and it creates a new mountpoint."""
    server = await make_server(janus=(janus.url,))
    (feed,) = await _fed(server)
    assert feed.mountpoint is not None
    first = feed.mountpoint.id
    api = JanusApi(janus.url)
    try:
        await api.open()
        await api.message({"request": "destroy", "id": first})
    finally:
        await api.close()
    await eventually(lambda: feed.connects >= 2 and feed.state is FeedState.FEEDING, 20)
    (listed,) = await peercam_mountpoints(janus.url)
    assert listed["id"] != first
    assert "mountpoint" in feed.last_error


async def test_two_janus_fed_at_once_cost_one_encode(
    make_server: ServerFactory, janus: JanusServer, janus2: JanusServer
) -> None:
    """Two Janus outputs and a page viewer of the same rung share one H.264 encoder; the
    status page shows each output's state, packets and keyframe requests."""
    server = await make_server(janus=(janus.url, janus2.url))
    await _fed(server, 2)
    direct = AiortcViewer(ws_url(server), decode_bar=False, codec="h264")
    try:
        await direct.connect()
        await direct.wait_frames(5, timeout=15)
        status = await _status(server)
    finally:
        await direct.close()
    assert status["encodersStarted"] == {"vp8": 0, "h264": 1}
    (encoder,) = status["encoders"].values()
    assert encoder["viewers"] == 3  # two feeds and the page's viewer
    assert [j["url"] for j in status["janus"]] == [janus.url, janus2.url]
    for output in status["janus"]:
        assert output["state"] == "feeding"
        assert output["packets"] > 0
        assert output["keyframeRequests"] >= 0
        assert isinstance(output["mountpoint"], int)


async def test_chromium_watches_through_janus_with_the_janus_page(
    make_server: ServerFactory, janus: JanusServer, browser: Browser
) -> None:
    """static/janus.html: a browser finds peercam's mountpoint on Janus and plays it, and
    plays again by itself after Janus restarted."""
    server = await make_server(janus=(janus.url,))
    await _fed(server)
    page = await browser.new_page()
    try:
        await page.goto(str(server.make_url("/static/janus.html").with_query(janus=janus.url)))
        decoded = await wait_for(
            page,
            """() => {
                const video = document.querySelector("janus-view video");
                const frames = video?.getVideoPlaybackQuality().totalVideoFrames ?? 0;
                return frames > 30 && frames;
            }""",
            timeout_s=30,
            what="30 frames decoded through Janus",
            diagnosis_js="() => JSON.stringify(window.__janus?.state)",
        )
        assert decoded > 30
        assert await page.evaluate("window.__janus.state.phase") == "playing"
        assert await page.evaluate("document.querySelector('video').videoWidth") == 640
        # Janus restarts: the page finds the new mountpoint peercam makes, and plays again.
        await janus.restart()
        await wait_for(
            page,
            "() => window.__janus.state.attempts >= 2",
            timeout_s=20,
            what="the page noticed that Janus went away",
            diagnosis_js="() => JSON.stringify(window.__janus?.state)",
        )
        shown = await page.evaluate("window.__janus.state.frames")
        await wait_for(
            page,
            f"() => window.__janus.state.phase === 'playing' && "
            f"window.__janus.state.frames > {shown} + 30",
            timeout_s=30,
            what="pictures again after Janus restarted",
            diagnosis_js="() => JSON.stringify(window.__janus?.state)",
        )
    finally:
        await page.close()


async def test_vp8_only_server_feeds_a_vp8_mountpoint(
    make_server: ServerFactory, janus: JanusServer
) -> None:
    """``--codec vp8``: the feed and its mountpoint follow the server's one codec."""
    server = await make_server(janus=(janus.url,), codecs=(Codec.VP8,))
    (feed,) = await _fed(server)
    assert feed.key is not None
    assert feed.key.codec is Codec.VP8
    assert feed.mountpoint is not None
    async with JanusAiortcViewer(janus.url, feed.mountpoint.id) as viewer:
        await viewer.wait_frames(5, timeout=20)


def test_a_janus_url_must_be_http() -> None:
    """A typo in --janus is the user's to fix at start, not a retry loop forever."""
    with pytest.raises(ValueError, match="--janus"):
        Config(janus=("janus.example.org:8088",))
    assert Config(janus=("http://janus.example.org:8088/janus",)).janus


async def test_a_feed_cancelled_while_it_winds_down_ends() -> None:
    """Shutdown right after Janus went away (the feed is cancelling its sender) must end the
    feed, not be swallowed into another retry: that hung the app's shutdown."""
    wound_down = asyncio.Event()

    async def fails() -> None:
        raise RtpOutputError("the encoder stopped")

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            wound_down.set()
            await asyncio.sleep(0.05)  # the sockets and the lease being released
            raise

    task = asyncio.ensure_future(first_of(fails(), slow_to_stop()))
    await asyncio.wait_for(wound_down.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
