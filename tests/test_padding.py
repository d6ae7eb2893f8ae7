"""Padding (webrtc/padding.py): padding-only RTX packets reach a real receiver, with the
abs-send-time a receiver's estimate needs, and break nothing of the picture.

It uses aiortc's private sender state: an aiortc upgrade that moves it fails here."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestServer
from aiortc.rtp import RtpPacket

from tests.aiortc_viewer import AiortcViewer
from tests.conftest import eventually, service_of, ws_url
from webrtc.padding import PADDING_BYTES, RtxPadding


async def test_padding_packets_arrive_on_the_rtx_stream_and_the_picture_goes_on(
    server: TestServer,
) -> None:
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    padded: list[RtpPacket] = []
    media_ssrcs: set[int] = set()
    try:
        await viewer.connect()
        await viewer.wait_frames(5, timeout=15)
        assert viewer.pc is not None
        receiver = viewer.pc.getTransceivers()[0].receiver
        handle = receiver._handle_rtp_packet

        async def count(packet: RtpPacket, arrival_time_ms: int) -> Any:
            if packet.padding_size and not packet.payload:
                padded.append(packet)
            else:
                media_ssrcs.add(packet.ssrc)
            return await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = count  # type: ignore[method-assign]
        [peer] = service_of(server).peers.peers()
        assert peer._transceiver is not None
        padding = RtxPadding(peer._transceiver.sender)
        assert padding.usable, "no RTX stream negotiated, or aiortc's sender state moved"
        await padding.send(20)
        await eventually(lambda: len(padded) >= 20, timeout=10)
        assert padding.packets == 20
        assert {p.padding_size for p in padded} == {PADDING_BYTES}
        assert all(p.extensions.abs_send_time is not None for p in padded)
        # On the RTX stream, never the media's: the decoder sees none of it.
        assert {p.ssrc for p in padded} == {peer._transceiver.sender._rtx_ssrc}
        assert not {p.ssrc for p in padded} & media_ssrcs
        sequences = [p.sequence_number for p in padded]
        assert len(set(sequences)) == 20
        frames = viewer.received.frames
        await viewer.wait_frames(frames + 15, timeout=10)
    finally:
        await viewer.close()
