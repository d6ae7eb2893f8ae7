"""Across NAT: TURN relays proven with coturn, time-limited credentials, and device hints."""

from __future__ import annotations

import asyncio
import time

import aioice
import pytest
from aioice.ice import TransportPolicy
from aiortc import RTCIceServer

from tests.aiortc_viewer import AiortcViewer
from tests.conftest import ServerFactory, ws_url
from tests.turn import coturn
from webrtc.ice import IceServer, TurnSecret, advertise
from webrtc.peers import ViewerHints

SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)


async def _relay_candidates(port: int, server: IceServer, transport: str) -> list[str]:
    """Ask coturn for an allocation with these credentials; the relay candidates it gave."""
    connection = aioice.Connection(
        ice_controlling=True,
        turn_server=("127.0.0.1", port),
        turn_username=server.username,
        turn_password=server.credential,
        turn_transport=transport,
        transport_policy=TransportPolicy.RELAY,
        use_ipv6=False,
    )
    try:
        async with asyncio.timeout(15):
            await connection.gather_candidates()
        return [c.type for c in connection.local_candidates]
    finally:
        await connection.close()


async def test_time_limited_credentials_are_accepted_fresh_and_refused_expired_or_forged() -> None:
    """The TURN REST scheme coturn checks: a leaked credential must stop working by itself."""
    async with coturn(secret="correct horse") as turn:
        secret = TurnSecret((turn.url(),), "correct horse", ttl=60)
        fresh = secret.mint("viewer1")
        assert fresh.username is not None
        assert fresh.username.endswith(":viewer1")
        assert await _relay_candidates(turn.port, fresh, "udp") == ["relay"]
        assert await _relay_candidates(turn.port, fresh, "tcp") == ["relay"]
        expired = secret.mint("viewer1", now=time.time() - 120)
        assert await _relay_candidates(turn.port, expired, "udp") == []
        forged = TurnSecret((turn.url(),), "guessed", ttl=60).mint("viewer1")
        assert await _relay_candidates(turn.port, forged, "udp") == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_relay_only_viewer_gets_video_through_turn(
    make_server: ServerFactory, transport: str
) -> None:
    """A viewer whose network allows no direct path still sees video, via the relay."""
    async with coturn(user=("peer", "cam")) as turn:
        server = await make_server()
        viewer = AiortcViewer(
            ws_url(server),
            ice_servers=[RTCIceServer(turn.url(transport), "peer", "cam")],
            relay_only=True,
        )
        try:
            await viewer.connect()
            await viewer.wait_frames(20, timeout=20)
            assert viewer.received.stamped >= 15
            assert viewer.selected_local_candidate_type() == "relay"
        finally:
            await viewer.close()


async def test_server_mints_turn_credentials_per_viewer_and_they_work(
    make_server: ServerFactory,
) -> None:
    """With --turn-secret the page receives short-lived credentials that coturn accepts."""
    async with coturn(secret="board secret") as turn:
        secret = TurnSecret((turn.url(),), "board secret", ttl=300)
        server = await make_server(turn_secret=secret)
        viewer = AiortcViewer(ws_url(server), use_config_ice_servers=True, relay_only=True)
        try:
            await viewer.connect()
            (entry,) = viewer.config["iceServers"]
            assert entry["urls"] == [turn.url()]
            expiry, viewer_id = entry["username"].split(":")
            assert viewer_id == viewer.config["viewerId"]
            assert 0 < int(expiry) - time.time() <= 300
            await viewer.wait_frames(20, timeout=20)
            assert viewer.selected_local_candidate_type() == "relay"
        finally:
            await viewer.close()
            await server.close()  # while coturn still runs: closing releases the allocation


async def test_relay_only_server_connects_through_turn(make_server: ServerFactory) -> None:
    """--ice-transport-policy relay: the server itself uses only the relay."""
    async with coturn(user=("peer", "cam")) as turn:
        server = await make_server(
            ice_servers=(IceServer((turn.url(),), "peer", "cam"),), relay_only=True
        )
        viewer = AiortcViewer(ws_url(server), decode_bar=False)
        try:
            await viewer.connect()
            assert viewer.config["iceTransportPolicy"] == "relay"
            await viewer.wait_frames(20, timeout=20)
            # The viewer's side of the pair is its host candidate; the server's is the relay.
            assert viewer.selected_local_candidate_type() == "host"
            assert "typ relay" in viewer.answer["sdp"]
            assert "typ host" not in viewer.answer["sdp"]
        finally:
            await viewer.close()
            await server.close()  # while coturn still runs: closing releases the allocation


@pytest.mark.parametrize(("user_agent", "codec", "size"), [
    (SAFARI_MAC, "h264", (1280, 720)),
    (IPHONE, "h264", (1280, 720)),
    (CHROME_ANDROID, "vp8", (1920, 1080)),
])  # fmt: skip
async def test_safari_and_ios_get_h264_at_most_720p(
    make_server: ServerFactory, user_agent: str, codec: str, size: tuple[int, int]
) -> None:
    """iOS decodes constrained baseline at level 3.1 only: H.264 first, never above 720p."""
    server = await make_server(pattern={"width": 1920, "height": 1080})
    viewer = AiortcViewer(ws_url(server), user_agent=user_agent, decode_bar=False)  # VP8 first
    try:
        await viewer.connect()
        assert viewer.answer["codec"] == codec
        await viewer.wait_frames(5, timeout=20)
        assert (viewer.received.width, viewer.received.height) == size
    finally:
        await viewer.close()


def test_user_agent_hints() -> None:
    """Only WebKit browsers get H.264 first; Chrome on a Mac is not Safari."""
    chrome_mac = SAFARI_MAC.replace("Version/17.5 Safari", "Chrome/126.0 Safari")
    assert ViewerHints.from_user_agent(IPHONE) == ViewerHints(prefer_h264=True, max_height=720)
    assert ViewerHints.from_user_agent(SAFARI_MAC).prefer_h264
    assert not ViewerHints.from_user_agent(chrome_mac).prefer_h264
    assert not ViewerHints.from_user_agent(CHROME_ANDROID).prefer_h264
    assert ViewerHints.from_user_agent("") == ViewerHints()


def test_advertised_addresses_duplicate_each_host_candidate() -> None:
    """Behind port forwarding the public address must be offered with the same port."""
    sdp = "\r\n".join([
        "v=0", "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=candidate:abc 1 udp 2130706431 10.0.0.5 40000 typ host",
        "a=candidate:def 1 udp 1694498815 198.51.100.7 40000 typ srflx raddr 10.0.0.5 rport 40000",
        "a=end-of-candidates", "",
    ])  # fmt: skip
    out = advertise(sdp, ["203.0.113.9"])
    assert "a=candidate:abcx1 1 udp 2130706430 203.0.113.9 40000 typ host" in out.split("\r\n")
    assert out.count("typ host") == 2
    assert out.count("typ srflx") == 1
    assert advertise(sdp, []) == sdp


async def test_answer_advertises_extra_addresses(make_server: ServerFactory) -> None:
    """--ice-advertise reaches the viewer in the answer."""
    server = await make_server(ice_advertise=("127.0.0.9",))
    viewer = AiortcViewer(ws_url(server), decode_bar=False)
    try:
        await viewer.connect()
        assert " 127.0.0.9 " in viewer.answer["sdp"]
        await viewer.wait_frames(5, timeout=20)  # the real address still works
    finally:
        await viewer.close()
