"""WHEP: the protocol with aiohttp's client and an aiortc player, then real WHEP players
(medooze's whip-whep and Eyevinn's webrtc-player, from npm) in Chromium."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import re
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from playwright.async_api import Browser
from yarl import URL

from signaling.whep import WhepSessions, parse_sdpfrag
from tests.aiortc_viewer import AiortcViewer
from tests.browser import wait_for
from tests.conftest import ServerFactory, eventually, service_of, ws_url
from tests.turn import coturn
from webrtc.encoders import Codec
from webrtc.ice import IceServer, TurnSecret, announce_only
from webrtc.ladder import LadderSpec

TOKEN = "whep-test-token"
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
_LINK = re.compile(r'<(?P<url>[^>]*)>(?P<params>(?:\s*;\s*[\w-]+="[^"]*")*)')
_PARAM = re.compile(r'([\w-]+)="([^"]*)"')


def parse_links(values: list[str]) -> list[dict[str, str]]:
    """``Link`` header values → one dict per link: ``url`` and its parameters."""
    links = []
    for value in values:
        for match in _LINK.finditer(value):
            links.append({"url": match["url"], **dict(_PARAM.findall(match["params"]))})
    return links


@dataclass
class Created:
    """What a ``201 Created`` said."""

    location: str
    etag: str
    answer: str
    links: list[dict[str, str]]
    headers: dict[str, str] = field(default_factory=dict)


class WhepPlayer:
    """A WHEP player made with aiortc: audio section first and recvonly video, as players
    offer (``codec`` preferred; ``only``: no other); ``trickle`` posts the offer without
    candidates and PATCHes them afterwards, under the first (audio) section's mid, as whip-whep
    does."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        endpoint: str,
        *,
        codec: str | None = None,
        only: bool = False,
        trickle: bool = False,
        token: str | None = None,
    ) -> None:
        self.http = http
        self.endpoint = endpoint
        self.codec = codec
        self.only = only
        self.trickle = trickle
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames = 0
        self._track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None
        self._frame = asyncio.Event()
        self.candidates: list[str] = []
        self.resource: str | None = None
        self._offer: str | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not self._track.done():
                self._track.set_result(track)

    async def offer(self) -> str:
        """The SDP to POST (made once)."""
        if self._offer is None:
            self._offer = await self._make_offer()
        return self._offer

    async def _make_offer(self) -> str:
        self.pc.addTransceiver("audio", direction="recvonly")
        video = self.pc.addTransceiver("video", direction="recvonly")
        if self.codec:  # that codec first, then (unless ``only``) the others, as a browser
            mime = "video/VP8" if self.codec == "vp8" else "video/H264"
            caps = RTCRtpSender.getCapabilities("video").codecs
            others = [] if self.only else [c for c in caps if c.mimeType not in (mime, "video/rtx")]
            video.setCodecPreferences(
                [c for c in caps if c.mimeType == mime]
                + others
                + [c for c in caps if c.mimeType == "video/rtx"]
            )
        with announce_only(["127.0.0.1"]):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        if not self.trickle:
            return sdp
        lines = sdp.split("\r\n")
        first = lines.index(next(line for line in lines if line.startswith("m=video")))
        self.candidates = [line for line in lines[:first] if line.startswith("a=candidate:")]
        assert self.candidates, "aiortc gathered no candidate"
        kept = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of-cand"))]
        return "\r\n".join(kept)

    async def start(self) -> Created:
        """POST the offer, apply the answer, trickle if asked; raises unless 201."""
        sdp = await self.offer()
        async with self.http.post(
            self.endpoint, data=sdp, headers={"Content-Type": SDP, **self.headers}
        ) as response:
            body = await response.text()
            assert response.status == 201, (response.status, body)
            assert response.content_type == SDP
            created = Created(
                location=response.headers["Location"],
                etag=response.headers["ETag"],
                answer=body,
                links=parse_links(response.headers.getall("Link", [])),
                headers=dict(response.headers),
            )
        self.resource = str(response.url.join(URL(created.location)))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        if self.trickle:
            assert await self.patch(self.sdpfrag(self.candidates)) == 204
        return created

    def sdpfrag(self, candidates: list[str], *, ufrag: str | None = None) -> str:
        sdp = self.pc.localDescription.sdp
        ufrag = ufrag or re.search(r"a=ice-ufrag:(\S+)", sdp)[1]  # type: ignore[index]
        pwd = re.search(r"a=ice-pwd:(\S+)", sdp)[1]  # type: ignore[index]
        return (
            f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
            "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
            + "".join(f"{c}\r\n" for c in candidates)
            + "a=end-of-candidates\r\n"
        )

    async def patch(self, body: str, content_type: str = SDPFRAG, **headers: str) -> int:
        assert self.resource is not None
        async with self.http.patch(
            self.resource, data=body, headers={"Content-Type": content_type, **self.headers,
                                               **headers}
        ) as response:  # fmt: skip
            return response.status

    async def delete(self) -> int:
        assert self.resource is not None
        async with self.http.delete(self.resource, headers=self.headers) as response:
            return response.status

    async def wait_frames(self, count: int, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            track = await self._track
            if self._reader is None:
                self._reader = asyncio.get_running_loop().create_task(self._read(track))
            while self.frames < count:
                self._frame.clear()
                await self._frame.wait()

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                self.frames += 1
                self._frame.set()
        except MediaStreamError:
            pass

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.pc.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def players(http: aiohttp.ClientSession) -> AsyncIterator[list[WhepPlayer]]:
    """Players made by the test; all closed after it."""
    made: list[WhepPlayer] = []
    yield made
    for player in made:
        await player.close()


def first_video_codec(sdp: str) -> str:
    """The codec an answer sends video with: its video section's first payload type's."""
    video = sdp.split("m=video ", 1)[1]
    payload_type = video.split("\r\n", 1)[0].split()[2]
    rtpmap = re.search(rf"a=rtpmap:{payload_type} ([\w-]+)/", video)
    assert rtpmap is not None
    return rtpmap[1]


def endpoint(server: TestServer) -> str:
    return str(server.make_url("/whep"))


def sessions_of(server: TestServer) -> WhepSessions:
    return server.app[WhepSessions.KEY]


async def test_an_offer_with_audio_first_and_no_candidates_plays_once_trickled(
    server: TestServer, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """whip-whep's way: POST before gathering, audio first, candidates PATCHed under the
    audio mid; the answer is 201 with the SDP, a relative Location and an ETag."""
    player = WhepPlayer(http, endpoint(server), trickle=True)
    players.append(player)
    created = await player.start()
    assert re.fullmatch(r"/whep/[\w-]{16,}", created.location), created.location
    assert re.fullmatch(r'"[0-9a-f]+"', created.etag)
    assert "a=candidate:" in created.answer  # every server candidate is in the answer
    audio = created.answer.split("m=audio")[1].split("m=video")[0]
    assert "a=inactive" in audio  # the server has no audio
    assert created.links == []  # no ICE servers configured: no Link
    (session,) = [sessions_of(server).get(created.location.rsplit("/", 1)[1])]
    assert session is not None
    assert len(session.candidates) == len(player.candidates)  # the trickled ones were taken
    # ... and reached the one ICE transport of the bundle (the audio section's, listed first).
    transports = {t.receiver.transport.transport for t in session.peer._pc.getTransceivers()}
    (ice_transport,) = transports
    remote = {(c.ip, c.port) for c in ice_transport.getRemoteCandidates()}
    trickled = {(c.split()[4], int(c.split()[5])) for c in player.candidates}
    assert trickled <= remote, (trickled, remote)
    await player.wait_frames(10)
    (peer,) = service_of(server).peers.peers()
    assert peer.viewer_id.startswith("whep-")
    assert peer.connection_state == "connected"
    stats = peer.stats()
    assert stats["rungs"] == 4  # on the ladder, under the rung controller, as a page viewer
    assert peer.frames_sent > 0


async def test_delete_ends_the_session_and_the_resource_is_gone(
    server: TestServer, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """DELETE closes the peer before it answers (media stops), frees the encoder, and the
    resource answers 404 afterwards, to PATCH and DELETE alike."""
    player = WhepPlayer(http, endpoint(server))
    players.append(player)
    await player.start()
    await player.wait_frames(5)
    service = service_of(server)
    assert service.connections.total() == 1  # the session holds a viewer slot
    started = time.monotonic()
    assert await player.delete() == 200
    assert time.monotonic() - started < 5  # generous: it takes a controller tick and a close
    assert len(service.peers) == 0
    assert len(sessions_of(server)) == 0
    assert service.connections.total() == 0
    await eventually(lambda: not service.encoders.running())  # the last viewer's encoder stops
    # The player sees its connection end: nothing more is sent to it.
    await eventually(lambda: player.pc.connectionState in ("closed", "failed"), timeout=15)
    assert await player.patch(player.sdpfrag([])) == 404
    assert await player.delete() == 404


async def test_a_session_that_ends_by_itself_removes_its_resource(
    make_server: ServerFactory, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """A player that never connects is dropped at the connect timeout: its resource goes
    with it and its slot is free again (no leak)."""
    server = await make_server(connect_timeout=1.0)
    player = WhepPlayer(http, endpoint(server), trickle=True)
    players.append(player)
    player.trickle = False
    sdp = await player.offer()
    # An offer whose ICE can never complete: its password is not the player's.
    sdp = re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:" + "x" * 24, sdp)
    async with http.post(endpoint(server), data=sdp, headers={"Content-Type": SDP}) as response:
        assert response.status == 201
        location = response.headers["Location"]
    await eventually(lambda: len(sessions_of(server)) == 0, timeout=15)
    assert service_of(server).connections.total() == 0
    async with http.delete(server.make_url(location)) as response:
        assert response.status == 404


async def test_requests_that_are_not_whep_are_refused_with_the_right_status(
    server: TestServer, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """415 for another content type, 400 for a body that is not SDP or an offer the server
    cannot take, 404 for an unknown resource; a live session's PATCH is checked likewise."""
    url = endpoint(server)

    async def post(body: str | bytes, content_type: str) -> tuple[int, str]:
        async with http.post(url, data=body, headers={"Content-Type": content_type}) as r:
            return r.status, await r.text()

    assert (await post("v=0\r\n", "application/json"))[0] == 415
    assert (await post("v=0\r\n", "text/plain"))[0] == 415
    status, text = await post("hello, camera", SDP)
    assert (status, text.split(":")[0]) == (400, "invalid-sdp")
    assert (await post(b"\xff\xfe", SDP))[0] == 400
    assert (await post("v=0\r\n" + "a=x\r\n" * 9000, SDP))[0] == 413
    two_videos = "v=0\r\n" + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:x\r\n" * 3
    status, text = await post(two_videos, SDP)
    assert (status, text.split(":")[0]) == (400, "unsupported-media")
    for method in ("PATCH", "DELETE"):
        async with http.request(
            method, server.make_url("/whep/nosuchsession"), data=parse_sdpfrag.__name__,
            headers={"Content-Type": SDPFRAG},
        ) as response:  # fmt: skip
            assert response.status == 404, method
    assert len(service_of(server).peers) == 0  # nothing refused left a peer behind

    player = WhepPlayer(http, endpoint(server))
    players.append(player)
    created = await player.start()
    assert await player.patch(player.sdpfrag([]), content_type=SDP) == 415
    assert await player.patch("hello, camera") == 400
    assert await player.patch(player.sdpfrag([]), **{"If-Match": '"other"'}) == 412
    assert await player.patch(player.sdpfrag([]), **{"If-Match": created.etag}) == 204
    # An ICE restart (new credentials): aiortc has none, so the session refuses it.
    assert await player.patch(player.sdpfrag([], ufrag="restart1")) == 422
    # mDNS names and TCP candidates are left out as from an offer, without failing the PATCH.
    unusable = [
        "a=candidate:1 1 udp 2122260223 3f1c-mdns.local 54321 typ host",
        "a=candidate:2 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active",
    ]
    assert await player.patch(player.sdpfrag(unusable)) == 204


async def test_through_a_reverse_proxy_the_location_is_relative(
    make_server: ServerFactory, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """Behind a proxy that serves peercam under a prefix (/cam/ → /), only a relative
    Location resolves to the resource: peercam cannot know the prefix."""
    server = await make_server(trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    player = WhepPlayer(http, endpoint(server))
    player.headers["X-Forwarded-For"] = "198.51.100.7"
    players.append(player)
    created = await player.start()
    assert re.fullmatch(r"whep/[\w-]{16,}", created.location), created.location
    assert await player.delete() == 200


async def test_access_control_is_the_token_and_a_preflight_needs_none(
    make_server: ServerFactory, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """No or a wrong token: 401 (with the Bearer challenge); OPTIONS (a CORS preflight,
    which browsers send without credentials) answers with what WHEP accepts."""
    server = await make_server(token=TOKEN)
    url = endpoint(server)
    for headers in ({}, {"Authorization": "Bearer wrong-token"}):
        async with http.post(url, data="v=0\r\n", headers={"Content-Type": SDP, **headers}) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.options(url) as response:
        assert response.status == 204
        assert response.headers["Accept-Post"] == SDP
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    player = WhepPlayer(http, url, token=TOKEN)
    players.append(player)
    created = await player.start()
    async with http.options(server.make_url(created.location)) as response:
        assert response.status == 204
        assert response.headers["Accept-Patch"] == SDPFRAG
    async with http.delete(server.make_url(created.location)) as response:
        assert response.status == 401  # the resource needs the token too
    assert await player.delete() == 200


async def test_cors_for_allowed_origins_exposes_location_etag_and_link(
    make_server: ServerFactory, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """A player on an --allow-origin site can read the 201's headers; other sites get no
    CORS headers at all."""
    site = "https://player.example"
    server = await make_server(allow_origins=(site,))
    url = endpoint(server)
    preflight = {"Origin": site, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    async with http.options(url, headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == site
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed
    async with http.options(url, headers={**preflight, "Origin": "https://evil.example"}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    player = WhepPlayer(http, url)
    player.headers["Origin"] = site
    players.append(player)
    created = await player.start()
    assert created.headers["Access-Control-Allow-Origin"] == site
    exposed = {
        h.strip().lower() for h in created.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert {"location", "etag", "link"} <= exposed


async def test_link_headers_carry_the_ice_servers_with_minted_turn_credentials(
    make_server: ServerFactory, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """As the page's config does: the static servers, then a TURN entry whose credentials
    were minted for this session (coturn's REST scheme) and expire after --turn-ttl."""
    secret = "whep-turn-secret"
    async with coturn(secret=secret) as turn:
        stun = f"stun:127.0.0.1:{turn.port}"
        server = await make_server(
            ice_servers=(IceServer((stun,)),),
            turn_secret=TurnSecret((turn.url(),), secret, ttl=600),
        )
        player = WhepPlayer(http, endpoint(server))
        players.append(player)
        created = await player.start()
        stun_link, turn_link = created.links
        assert stun_link == {"url": stun, "rel": "ice-server"}
        assert turn_link["url"] == turn.url()
        assert turn_link["rel"] == "ice-server"
        assert turn_link["credential-type"] == "password"
        expiry, label = turn_link["username"].split(":", 1)
        assert abs(int(expiry) - (time.time() + 600)) < 60
        (peer,) = service_of(server).peers.peers()
        assert label == peer.viewer_id  # minted for this session
        digest = hmac.new(secret.encode(), turn_link["username"].encode(), hashlib.sha1)
        assert turn_link["credential"] == base64.b64encode(digest.digest()).decode()
        await player.wait_frames(3)
        assert await player.delete() == 200  # while coturn runs: the relay is released


async def test_a_whep_viewer_and_a_page_viewer_share_one_encoder(
    make_server: ServerFactory, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """A WHEP viewer is an ordinary viewer: the same shared encoder feeds it and a page
    viewer, and /api/status counts both on it."""
    # One rung, so that no step down on a busy machine starts a second encoder.
    server = await make_server(ladder=LadderSpec("off"))
    page = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    player = WhepPlayer(http, endpoint(server), codec="vp8")
    players.append(player)
    try:
        await page.connect()
        await player.start()
        await page.wait_frames(5, timeout=15)
        await player.wait_frames(5)
        async with http.get(server.make_url("/api/status")) as response:
            status = await response.json()
        viewers = {key: e["viewers"] for key, e in status["encoders"].items()}
        assert list(viewers.values()) == [2], viewers
        assert status["encodersStarted"]["vp8"] == 1
        assert {p["viewerId"][:5] == "whep-" for p in status["peers"]} == {True, False}
    finally:
        await page.close()


async def test_whep_sessions_count_against_the_viewer_caps_and_free_their_slot(
    make_server: ServerFactory, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """--max-per-address counts WHEP sessions with the page's sockets: a second session (or
    a page) from the same client is refused until the first is deleted."""
    server = await make_server(max_per_address=1)
    url = endpoint(server)
    first = WhepPlayer(http, url)
    second = WhepPlayer(http, url)
    players += [first, second]
    await first.start()
    sdp = await second.offer()
    async with http.post(url, data=sdp, headers={"Content-Type": SDP}) as response:
        assert response.status == 429
        assert "Retry-After" in response.headers
    async with http.ws_connect(ws_url(server)) as ws:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 1008
    assert await first.delete() == 200
    await second.start()  # the slot is free again
    await second.wait_frames(3)

    full = await make_server(max_viewers=1)
    third, fourth = WhepPlayer(http, endpoint(full)), WhepPlayer(http, endpoint(full))
    players += [third, fourth]
    await third.start()
    sdp = await fourth.offer()
    async with http.post(endpoint(full), data=sdp, headers={"Content-Type": SDP}) as response:
        assert response.status == 503  # --max-viewers, counted with the page's sockets
        assert "Retry-After" in response.headers
    assert len(service_of(full).peers) == 1  # the refused offer made no peer


async def test_a_jpeg_only_server_refuses_whep_offers(
    make_server: ServerFactory, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """--no-webrtc: 403 with the reason, and no peer."""
    server = await make_server(webrtc=False)
    player = WhepPlayer(http, endpoint(server))
    players.append(player)
    sdp = await player.offer()
    async with http.post(endpoint(server), data=sdp, headers={"Content-Type": SDP}) as response:
        assert response.status == 403
        assert (await response.text()).startswith("webrtc-disabled")
    assert len(service_of(server).peers) == 0


async def test_codec_flag_applies_to_whep_answers(
    make_server: ServerFactory, http: aiohttp.ClientSession, players: list[WhepPlayer]
) -> None:
    """--codec h264: a player offering VP8 first gets H.264, or 400 when it offers none; with
    both allowed, a player that prefers H.264 gets it (codec preferences are set before the
    offer is applied: aiortc settles the answer's codecs there)."""
    both = await make_server()
    prefers_h264 = WhepPlayer(http, endpoint(both), codec="h264")
    players.append(prefers_h264)
    created = await prefers_h264.start()
    assert first_video_codec(created.answer) == "H264"
    await prefers_h264.wait_frames(3)
    server = await make_server(codecs=(Codec.H264,))
    player = WhepPlayer(http, endpoint(server))
    players.append(player)
    created = await player.start()
    assert first_video_codec(created.answer) == "H264"
    assert "VP8" not in created.answer
    vp8_only = WhepPlayer(http, endpoint(server), codec="vp8", only=True)
    players.append(vp8_only)
    sdp = await vp8_only.offer()
    async with http.post(endpoint(server), data=sdp, headers={"Content-Type": SDP}) as response:
        assert response.status == 400
        assert (await response.text()).startswith("no-codec")
    await player.wait_frames(3)


def test_sdpfrag_parsing() -> None:
    """The trickle fragment: credentials once, candidates with their section's mid."""
    frag = parse_sdpfrag(
        "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
    )
    assert frag.ufrag == "abcd"
    assert frag.candidates == (("0", "candidate:1 1 udp 1 127.0.0.1 5000 typ host"),)
    assert frag.end_of_candidates
    for bad in ("hello", "a=ice-ufrag:a\r\na=ice-ufrag:b\r\n", "a=candidate:x\r\n" * 33):
        with pytest.raises(ValueError):  # noqa: PT011 — the parser's one error type
            parse_sdpfrag(bad)


# -- real WHEP players in Chromium -------------------------------------------------------------

PLAYERS_DIR = Path(__file__).resolve().parent / "whep"
PLAYERS = ("whipWhep", "eyevinn")
MIME_TYPES = {Codec.VP8: "video/VP8", Codec.H264: "video/H264"}


@pytest.fixture(scope="session")
def players_bundle() -> Path:
    """tests/whep/players.js and the two npm players, bundled by esbuild (fresh each run)."""
    esbuild = PLAYERS_DIR / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists():
        pytest.fail(
            f"the WHEP players are not installed: run scripts/test.sh, or `npm ci` in "
            f"{PLAYERS_DIR}",
            pytrace=False,
        )
    out = PLAYERS_DIR / "dist" / "players.js"
    subprocess.run(
        [str(esbuild), "players.js", "--bundle", "--format=iife", "--target=es2020",
         f"--outfile={out}", "--log-level=warning"],
        cwd=PLAYERS_DIR, check=True, timeout=60,
    )  # fmt: skip
    return out


@pytest.fixture
async def player_site(players_bundle: Path) -> AsyncIterator[TestServer]:
    """Another origin (127.0.0.1 on another port) serving the test page and the bundle: the
    players are embedded elsewhere, as --allow-origin is for."""
    files = {"/player.html": PLAYERS_DIR / "player.html", "/dist/players.js": players_bundle}

    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(files[request.path])

    app = web.Application()
    for path in files:
        app.router.add_get(path, serve)
    site = TestServer(app, host="127.0.0.1", port=0)
    await site.start_server()
    yield site
    await site.close()


@pytest.mark.browser
async def test_npm_whep_players_play_vp8_and_h264_in_chromium(
    make_server: ServerFactory, browser: Browser, player_site: TestServer
) -> None:
    """whip-whep (trickling by PATCH) and Eyevinn's player (no trickle), from another site
    with a token, decode the codec --codec asks for from one shared encoder, and leave with
    DELETE. (One test for both codecs: one browser launch.)"""
    for codec in (Codec.VP8, Codec.H264):
        await _play_with_npm_players(make_server, browser, player_site, codec)


async def _play_with_npm_players(
    make_server: ServerFactory, browser: Browser, player_site: TestServer, codec: Codec
) -> None:
    origin = str(player_site.make_url("/")).rstrip("/")
    # One rung: a busy machine may step a viewer down, which would start a second encoder.
    server = await make_server(
        token=TOKEN, codecs=(codec,), allow_origins=(origin,), ladder=LadderSpec("off")
    )
    # With a camera permission Chromium announces its host candidates (here 127.0.0.1); without
    # one it gathers none on loopback and the server learns its address from its checks alone.
    # The permission makes the players' candidates real: whip-whep's reach peercam by PATCH.
    context = await browser.new_context(permissions=["camera"])
    service = service_of(server)
    try:
        pages = {}
        for name in PLAYERS:  # whip-whep first: its view() returns once its POST is answered
            page = pages[name] = await context.new_page()
            await page.goto(str(player_site.make_url("/player.html")))
            await page.evaluate(
                "([name, url, token]) => window.startPlayer(name, url, token)",
                [name, endpoint(server), TOKEN],
            )
            if name == "whipWhep":
                (whip_whep,) = service.peers.peers()
        for name, page in pages.items():
            figures = await wait_for(
                page,
                "() => window.whepFigures?.framesDecoded > 30 && window.whepFigures",
                timeout_s=20,
                what=f"{name} decoding 30 {codec} frames",
                diagnosis_js="() => window.whepFigures",
            )
            assert figures["mimeType"] == MIME_TYPES[codec], (name, figures)
            assert figures["width"] == 640, (name, figures)
        (key,) = service.encoders.running()
        assert service.encoders.users(key) == 2  # one encoder for both players
        assert service.encoders.started[key] == 1
        (eyevinn,) = set(service.peers.peers()) - {whip_whep}
        assert eyevinn.viewer_id.startswith("whep-")
        # whip-whep's offer has no candidates (it posts before gathering): its PATCH gave them;
        # Eyevinn's waits for gathering and has them in the offer.
        sessions = sessions_of(server).sessions()
        assert len(sessions) == 2
        assert all(len(s.candidates) >= 1 for s in sessions)
        for page in pages.values():
            await page.evaluate("() => window.stopPlayer()")
        await eventually(lambda: len(service.peers) == 0 and len(sessions_of(server)) == 0)
        assert service.connections.total() == 0
        # Eyevinn's player DELETEs (through CORS), then closes its peer connection; whip-whep
        # closes first, and peercam may see the close (DTLS close_notify) before the DELETE.
        assert eyevinn.close_reason == "the player ended the WHEP session"
        assert whip_whep.close_reason in (eyevinn.close_reason, "connection closed")
    finally:
        await context.close()
