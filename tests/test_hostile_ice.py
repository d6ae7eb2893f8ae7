"""Hostile offers and candidates (issue #14, findings 3 and 4) against a real server on loopback:
the server answers with typed errors, stays small, and sends STUN only where and as much as a
viewer's own candidates justify."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from tests.aiortc_viewer import assert_serves_a_viewer
from tests.conftest import ServerFactory, eventually, service_of, ws_url
from tests.hostile_sdp import host_candidate, offer, open_counters
from webrtc import sdpcheck
from webrtc.ice import announce_only

PROBE = '{"type":"__probe__"}'
#: Transmissions of one check: aioice's first send plus its retransmissions (aioice.stun).
SENDS_PER_CHECK = 7


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _connect(
    http: aiohttp.ClientSession, server: TestServer
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(ws_url(server))
    assert (await ws.receive_json(timeout=10))["type"] == "config"
    return ws


async def _replies_until_probe(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every reply to what was sent before the probe (the probe's own error marks the end)."""
    await ws.send_str(PROBE)
    replies: list[dict[str, Any]] = []
    while True:
        reply: dict[str, Any] = await ws.receive_json(timeout=15)
        if reply.get("code") == "unknown-type" and "__probe__" in reply["message"]:
            return replies
        replies.append(reply)


async def _status(http: aiohttp.ClientSession, server: TestServer) -> dict[str, Any]:
    async with http.get(server.make_url("/api/status"), params={"trim": "1"}) as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [r.getMessage()[:200] for r in loud]


async def test_checks_go_only_to_candidates_within_the_cap(
    make_server: ServerFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A session naming 24 targets: checks reach the first 16 only, each a bounded number of
    times, and the session ends at the connect timeout (not a UDP cannon)."""
    caplog.set_level(logging.INFO)
    server = await make_server(connect_timeout=3.0)
    limit = sdpcheck.MAX_REMOTE_CANDIDATES
    counters = await open_counters(limit + 8)
    try:
        ws = await _connect(http, server)
        await ws.send_str(json.dumps({"type": "offer", "sdp": offer()}))
        answer = await ws.receive_json(timeout=15)
        assert answer["type"] == "answer", answer
        for n, counter in enumerate(counters, start=1):
            candidate = "candidate:" + host_candidate(counter.port, n=n)
            await ws.send_json({"type": "candidate", "candidate": candidate, "sdpMid": "0"})
        replies = await _replies_until_probe(ws)
        assert [r["code"] for r in replies] == ["invalid-candidate"] * 8, replies
        assert all(r["inReplyTo"] == "candidate" for r in replies)
        assert all("too many candidates" in r["message"] for r in replies)
        bye = await ws.receive_json(timeout=15)
        assert bye == {"type": "bye", "reason": "not connected within 3 s"}
        await ws.close()
        await eventually(lambda: len(service_of(server).peers) == 0)
        checked, spared = counters[:limit], counters[limit:]
        assert all(c.packets >= 1 for c in checked), [c.packets for c in checked]
        assert all(c.packets <= SENDS_PER_CHECK for c in checked), [c.packets for c in checked]
        assert [c.packets for c in spared] == [0] * len(spared)
    finally:
        for counter in counters:
            counter.close()
    _no_tracebacks(caplog)
    await assert_serves_a_viewer(ws_url(server))


async def test_a_huge_ufrag_is_refused_before_anything_is_sent(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    """A 12,000-character ufrag would go into every STUN request: refused, 0 packets, no peer."""
    (counter,) = await open_counters(1)
    try:
        ws = await _connect(http, server)
        sdp = offer(ufrag="u" * 12_000, candidates=[host_candidate(counter.port)])
        await ws.send_str(json.dumps({"type": "offer", "sdp": sdp}))
        reply = await ws.receive_json(timeout=15)
        assert (reply["type"], reply["code"], reply["inReplyTo"]) == (
            "error",
            "invalid-sdp",
            "offer",
        )
        assert "ice-ufrag" in reply["message"]
        assert len(reply["message"]) < 200  # the attacker's text is not echoed
        assert len(service_of(server).peers) == 0
        # A fixed window as a measurement: checks would start within 20 ms of an answer.
        await asyncio.sleep(1.0)
        assert counter.packets == 0
    finally:
        counter.close()


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        (host_candidate(99_999), "port"),
        (host_candidate(0), "port"),
        (host_candidate(53), "below 1024"),
        ("1 1 udp 2130706431 3f1e6a5c-0b0e-4bde-9d7b-2f0e0c1a1b2c.local 50000 typ host", "mDNS"),
        ("1 1 udp 2130706431 camera.example.org 50000 typ host", "hostname"),
        (host_candidate(50_000, "255.255.255.255"), "broadcast"),
        (host_candidate(50_000, "224.0.0.251"), "multicast"),
        (host_candidate(50_000, "0.0.0.0"), "unspecified"),
        (host_candidate(50_000, "fe80::1"), "link-local"),
        (host_candidate(50_000, "::ffff:127.0.0.1"), "IPv4-mapped"),
        ("1 1 udp 2130706431 127.0.0.1 50000 typ prflx", "peer-reflexive"),
    ],
)
async def test_unusable_candidates_get_invalid_candidate_and_the_session_carries_on(
    server: TestServer,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    candidate: str,
    why: str,
) -> None:
    """Each kind is refused with a reason (no traceback), and the session's ICE socket still
    works: a good candidate afterwards gets checks."""
    caplog.set_level(logging.DEBUG)
    (counter,) = await open_counters(1)
    try:
        ws = await _connect(http, server)
        await ws.send_str(json.dumps({"type": "offer", "sdp": offer()}))
        assert (await ws.receive_json(timeout=15))["type"] == "answer"
        await ws.send_json({"type": "candidate", "candidate": "candidate:" + candidate})
        (reply,) = await _replies_until_probe(ws)
        assert (reply["code"], reply["inReplyTo"]) == ("invalid-candidate", "candidate"), reply
        assert why in reply["message"], reply["message"]
        good = "candidate:" + host_candidate(counter.port, n=2)
        await ws.send_json({"type": "candidate", "candidate": good, "sdpMid": "0"})
        assert await _replies_until_probe(ws) == []
        await eventually(lambda: counter.packets >= 1)
        await ws.close()
    finally:
        counter.close()
    _no_tracebacks(caplog)


async def test_an_offer_with_many_sections_is_refused_without_a_peer(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    """135 video sections (14 KB) would cost ~18 MB each: refused before any peer exists."""
    sdp = offer(videos=135, compact=True)
    assert len(sdp) < 15 * 1024
    before = (await _status(http, server))["process"]["rssMb"]
    for _ in range(10):
        ws = await _connect(http, server)
        await ws.send_str(json.dumps({"type": "offer", "sdp": sdp}))
        reply = await ws.receive_json(timeout=30)
        assert (reply["type"], reply["code"], reply["inReplyTo"]) == (
            "error",
            "unsupported-media",
            "offer",
        ), reply
        assert len(service_of(server).peers) == 0
        await ws.close()
    status = await _status(http, server)
    assert status["peers"] == []
    assert status["process"]["rssMb"] - before < 30, (before, status["process"]["rssMb"])
    await assert_serves_a_viewer(ws_url(server))


@pytest.mark.parametrize(
    ("sdp", "code"),
    [
        (offer(videos=2), "unsupported-media"),
        (offer(audio="sendrecv"), "unsupported-media"),
        (offer(candidates=[host_candidate(40_000 + n, n=n) for n in range(40)]), "invalid-sdp"),
        (offer(pwd="short"), "invalid-sdp"),
        (offer(ufrag="a b!"), "invalid-sdp"),
    ],
)
async def test_refused_offers_get_a_typed_error(
    server: TestServer, http: aiohttp.ClientSession, sdp: str, code: str
) -> None:
    """Each refusal is an error in reply to the offer, and no peer is left."""
    ws = await _connect(http, server)
    await ws.send_str(json.dumps({"type": "offer", "sdp": sdp}))
    reply = await ws.receive_json(timeout=15)
    assert (reply["type"], reply["code"], reply["inReplyTo"]) == ("error", code, "offer"), reply
    assert len(service_of(server).peers) == 0
    await ws.close()


async def test_a_whep_style_offer_with_audio_plays_video_and_answers_audio_inactive(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    """WHEP players offer audio too: the server has none, answers it inactive, sends video."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        video: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not video.done():
                video.set_result(track)

        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        with announce_only(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        ws = await _connect(http, server)
        await ws.send_json({"type": "offer", "sdp": pc.localDescription.sdp})
        answer = await ws.receive_json(timeout=15)
        assert answer["type"] == "answer", answer
        audio_section = answer["sdp"].split("m=audio")[1].split("m=video")[0]
        assert "a=inactive" in audio_section
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        track = await asyncio.wait_for(video, 15)
        frame = await asyncio.wait_for(track.recv(), 15)
        assert frame.width == 640  # type: ignore[union-attr]
        await ws.close()
    finally:
        await pc.close()
