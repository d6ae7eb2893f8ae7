"""The ladder with real aiortc viewers: keyframe requests, RTCP reaching the controller, rung
switches that never break the picture, and JPEG rungs."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from aiohttp.test_utils import TestServer
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from tests.aiortc_viewer import AiortcViewer
from tests.conftest import ServerFactory, eventually, service_of, ws_url
from tests.test_pictures import JpegClient


async def _status(server: TestServer) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(server.make_url("/api/status")) as r:
        data: dict[str, object] = await r.json()
        return data


def _media_ssrc(viewer: AiortcViewer) -> int:
    match = re.search(r"a=ssrc:(\d+) ", viewer.answer["sdp"])
    assert match is not None, "the answer names no SSRC"
    return int(match.group(1))


async def _send_remb(viewer: AiortcViewer, bitrate: int) -> None:
    """A real REMB over the wire, as a browser's receiver sends it."""
    assert viewer.pc is not None
    receiver = viewer.pc.getTransceivers()[0].receiver
    packet = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(bitrate, [_media_ssrc(viewer)])
    )
    await receiver._send_rtcp(packet)


async def test_a_pli_from_the_viewer_brings_an_idr_back(server: TestServer) -> None:
    """PLI → the viewer's rung forces an IDR: an aiortc upgrade that breaks the hook fails here.
    (H.264: its decoder marks IDR pictures as keyframes; aiortc's VP8 decoder does not.)"""
    viewer = AiortcViewer(ws_url(server), codec="h264", decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(30, timeout=15)
        [encoder] = service_of(server).encoders.running().values()
        forced, keyframes = encoder.forced_keyframes, viewer.received.keyframes
        assert viewer.pc is not None
        receiver = viewer.pc.getTransceivers()[0].receiver
        await receiver._send_rtcp_pli(_media_ssrc(viewer))
        await eventually(lambda: encoder.forced_keyframes > forced, timeout=5)
        await eventually(lambda: viewer.received.keyframes > keyframes, timeout=5)
    finally:
        await viewer.close()


async def test_receiver_reports_and_remb_reach_the_controller(server: TestServer) -> None:
    """The status shows the viewer's estimate and round-trip time, from its own RTCP."""
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(5, timeout=15)

        async def reported() -> dict[str, object]:
            peers = (await _status(server))["peers"]
            assert isinstance(peers, list)
            peer: dict[str, object] = peers[0]
            return peer

        async with asyncio.timeout(20):
            while True:
                peer = await reported()
                if peer["estimateBps"] is not None and peer["rttMs"] is not None:
                    break
                await viewer.wait_frames(viewer.received.frames + 15, timeout=10)
        assert peer["rungIndex"] == 0
        assert peer["fractionLost"] == 0
        assert isinstance(peer["senderReports"], int)
        assert peer["senderReports"] > 0  # ours, every control tick, answered with a round trip
        assert peer["paddingBytes"] == 0  # the top rung has nothing above it to probe for
        rung = await viewer.wait_rung()
        assert rung["index"] == 0
        assert rung["count"] == 4
        assert rung["width"] == 640
    finally:
        await viewer.close()


async def test_congestion_moves_a_viewer_down_and_the_picture_keeps_decoding(
    server: TestServer,
) -> None:
    """A falling REMB: the viewer moves to a smaller rung at its IDR and decodes on; the rung
    it left stops with its last viewer; the page is told."""
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=True)
    service = service_of(server)
    try:
        await viewer.connect()
        await viewer.wait_frames(20, timeout=15)
        assert viewer.received.sizes == [(640, 480)]
        await _send_remb(viewer, 2_000_000)
        await _send_remb(viewer, 200_000)  # a drop: the receiver saw its queue grow
        await eventually(lambda: len(viewer.received.sizes) > 1, timeout=10)
        frames = viewer.received.frames
        await viewer.wait_frames(frames + 20, timeout=10)  # decoding goes on after the switch
        assert viewer.received.sizes[1][1] < 480
        assert viewer.received.sizes[-1] == (viewer.received.width, viewer.received.height)
        assert viewer.received.last_luma > 20  # a picture, not a black or broken frame
        assert (await viewer.wait_rung(lambda r: r["index"] > 0))["bitrate"] < 921_600
        switches = service.peers.peers()[0].stats()["rungSwitches"]
        assert isinstance(switches, int)
        assert switches >= 1
        assert sum(service.encoders.started.values()) >= 2
    finally:
        await viewer.close()
    await eventually(lambda: not service.encoders.running())


async def test_ladder_off_runs_one_rung(make_server: ServerFactory) -> None:
    """--ladder off: one shared encoder per codec, as before the ladder."""
    from webrtc.ladder import LadderSpec

    server = await make_server(ladder=LadderSpec("off"))
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    try:
        await viewer.connect()
        await viewer.wait_frames(10, timeout=15)
        status = await _status(server)
        assert status["ladder"] == [status["ladder"][0]]  # type: ignore[index]
        assert (await viewer.wait_rung())["count"] == 1
    finally:
        await viewer.close()


async def test_widths_beyond_the_source_share_the_source_size_encoder(server: TestServer) -> None:
    """1280, 1920 and 2560 of a 640-wide source are the same picture: one encoder, not three."""
    async with aiohttp.ClientSession() as http:
        for width in (640, 1280, 1920, 2560):
            async with http.get(server.make_url(f"/snapshot.jpg?width={width}")) as r:
                assert r.status == 200
    assert len(service_of(server).jpeg.started) == 1  # one key: the source-size rung


async def test_a_jpeg_viewer_whose_credit_comes_back_slowly_steps_down(server: TestServer) -> None:
    """A slow link in JPEG mode: smaller pictures, shared with others on that rung."""
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(server)) as ws:
        client = JpegClient(ws, ack=False)
        await client.start()
        service = service_of(server)
        await eventually(lambda: len(service.jpeg_streams) == 1)
        [stream] = service.jpeg_streams
        async with asyncio.timeout(20):
            while stream.stats()["rungIndex"] == 0:
                # Acknowledge about 5 pictures a second: a sixth of the source's rate.
                await ws.receive(timeout=10)
                await asyncio.sleep(0.2)  # the slow viewer's pace (what it simulates)
                await ws.send_json({"type": "ack"})
        assert stream.switches >= 1
        assert "q75" not in str(stream.key)
