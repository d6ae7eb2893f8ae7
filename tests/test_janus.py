"""Fan-out through Janus: peercam feeds real Janus processes; viewers watch through Janus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp.test_utils import TestServer

from signaling.janus import FeedState, JanusFeed
from tests.conftest import ServerFactory, eventually, service_of
from tests.janus_lab import JanusAiortcViewer, JanusServer, lab_veth, peercam_mountpoints
from webrtc.encoders import Codec


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
        # Janus passes on at most one keyframe request a second: ask until one is passed.
        async with asyncio.timeout(15):
            while feed.counters.keyframe_requests == requests:
                await viewer.send_pli()
                with contextlib.suppress(TimeoutError):
                    await eventually(lambda: feed.counters.keyframe_requests > requests, 1.2)
        assert feed.counters.keyframe_requests > requests
        await eventually(lambda: encoder.forced_keyframes > forced, 5)
