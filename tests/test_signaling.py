"""The /ws handler against hostile and mistaken clients: an error back, nothing else breaks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.aiortc_viewer import AiortcViewer
from tests.conftest import service_of, ws_url

VALID_OFFER_HEAD = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture
async def socket(server: TestServer) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        config = await ws.receive_json(timeout=10)
        assert config["type"] == "config"
        yield ws


async def _error_for(ws: aiohttp.ClientWebSocketResponse, payload: str | bytes) -> dict[str, Any]:
    if isinstance(payload, bytes):
        await ws.send_bytes(payload)
    else:
        await ws.send_str(payload)
    reply: dict[str, Any] = await ws.receive_json(timeout=10)
    assert reply["type"] == "error", reply
    assert reply["message"]
    return reply


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("not json", "bad-json"),
        ("[1, 2]", "bad-message"),
        ('{"sdp": "v=0"}', "bad-message"),
        ('{"type": "dance"}', "unknown-type"),
        ('{"type": "offer", "sdp": 42}', "invalid-field"),
        ('{"type": "offer"}', "invalid-field"),
        ('{"type": "offer", "sdp": "hello"}', "invalid-sdp"),
        (
            '{"type": "candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}',
            "unexpected",
        ),
        ('{"type": "candidate", "candidate": null, "sdpMLineIndex": "0"}', "invalid-field"),
        (json.dumps({"type": "offer", "sdp": "v=0" + "x" * 20_000}), "too-large"),
        (b"\x00\x01binary", "binary-not-allowed"),
    ],
)
async def test_bad_message_gets_a_typed_error_and_the_socket_stays_open(
    socket: aiohttp.ClientWebSocketResponse, payload: str | bytes, code: str
) -> None:
    """Rule 4: every mistake is answered with a reason, and the session carries on."""
    reply = await _error_for(socket, payload)
    assert reply["code"] == code
    # Still usable: a second mistake is answered too.
    again = await _error_for(socket, '{"type": "dance"}')
    assert again["code"] == "unknown-type"


async def test_invalid_sdp_is_refused_with_a_reason(
    socket: aiohttp.ClientWebSocketResponse, server: TestServer
) -> None:
    """SDP that aiortc cannot parse must not leave a half-made peer behind."""
    bad = VALID_OFFER_HEAD + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 nonsense\r\n"
    reply = await _error_for(socket, json.dumps({"type": "offer", "sdp": bad}))
    assert reply["code"] in ("invalid-sdp", "no-codec")
    assert reply["inReplyTo"] == "offer"
    no_video = VALID_OFFER_HEAD
    reply = await _error_for(socket, json.dumps({"type": "offer", "sdp": no_video}))
    assert reply["code"] == "invalid-sdp"
    assert len(service_of(server).peers) == 0


async def test_a_new_offer_is_rate_limited_then_replaces_the_session(server: TestServer) -> None:
    """Renegotiation (the page's answer to a stall) replaces the peer, at most every 2 s, and
    leaves nothing of the first one behind."""
    viewer = AiortcViewer(ws_url(server), decode_bar=False)
    service = service_of(server)
    try:
        await viewer.connect()
        assert viewer.ws is not None
        assert viewer.pc is not None
        first = service.peers.peers()
        await viewer.ws.send_json({"type": "offer", "sdp": viewer.pc.localDescription.sdp})
        reply = await viewer.next_server_message(timeout=10)
        assert reply["type"] == "error"
        assert reply["code"] == "rate-limited"
        assert service.peers.peers() == first
        await viewer.wait_frames(60, timeout=15)  # the first session plays on (for 2 s)
        await viewer.negotiate()
        frames = viewer.received.frames
        await viewer.wait_frames(frames + 10, timeout=15)
        assert len(service.peers) == 1
        assert service.peers.peers() != first
        running = service.encoders.running()
        assert [service.encoders.users(key) for key in running] == [1]
    finally:
        await viewer.close()


async def test_malformed_candidate_after_offer_is_refused(server: TestServer) -> None:
    """A garbage candidate must be answered, and the stream must keep playing."""
    viewer = AiortcViewer(ws_url(server), decode_bar=False)
    try:
        await viewer.connect()
        assert viewer.ws is not None
        await viewer.ws.send_json({"type": "candidate", "candidate": "candidate:garbage"})
        reply = await viewer.next_server_message(timeout=10)
        assert reply["type"] == "error"
        assert reply["code"] == "invalid-candidate"
        await viewer.ws.send_json({"type": "candidate", "candidate": None})  # end: accepted
        await viewer.wait_frames(10, timeout=15)
    finally:
        await viewer.close()


async def test_a_hostile_client_does_not_disturb_another_viewer(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One client's garbage must cost other viewers nothing, and log nothing alarming."""
    caplog.set_level(logging.DEBUG)
    viewer = AiortcViewer(ws_url(server), decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(5, timeout=15)
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
            await ws.receive_json(timeout=10)
            for payload in ("{", "[]", '{"type":1}', '{"type":"offer","sdp":"v=0 junk"}') * 25:
                await ws.send_str(payload)
                reply = await ws.receive_json(timeout=10)
                assert reply["type"] == "error"
        before = viewer.received.frames
        await viewer.wait_frames(before + 30, timeout=15)
    finally:
        await viewer.close()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]


async def test_config_names_codecs_and_ice_servers(server: TestServer) -> None:
    """The page configures its RTCPeerConnection from this message alone."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        config = await ws.receive_json(timeout=10)
    assert config["type"] == "config"
    assert config["iceServers"] == []  # never a public STUN server by default
    assert config["codecs"] == ["vp8", "h264"]
    assert config["iceTransportPolicy"] == "all"
    assert isinstance(config["viewerId"], str)
    assert config["viewerId"]


async def test_oversized_frame_closes_with_message_too_big(server: TestServer) -> None:
    """Beyond the hard frame cap the socket is closed by policy (1009), not buffered."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        await ws.receive_json(timeout=10)
        await ws.send_str("x" * (2 * 1024 * 1024))
        msg = await ws.receive(timeout=10)
        # The close frame says 1009, unless the line dropped while the client still wrote.
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert msg.type != aiohttp.WSMsgType.CLOSE or msg.data == 1009, msg
    assert len(service_of(server).viewers) == 0
