"""RTP header extensions peercam adds to aiortc's (webrtc/extensions.py): a viewer that offers
playout delay is answered with it and gets it, 0 to 0 ms, on every packet; one that does not
is answered as before.

It replaces aiortc's private header-extension map on the sender: an aiortc upgrade that moves
it fails here."""

from __future__ import annotations

import re
from struct import unpack_from
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensions, unpack_header_extensions
from aiortc.sdp import SessionDescription

from tests.aiortc_viewer import AiortcViewer
from tests.conftest import eventually, ws_url
from webrtc.extensions import (
    PLAYOUT_DELAY_URI,
    PLAYOUT_DELAY_ZERO,
    ExtraExtensions,
    SenderExtensions,
    answer_with,
)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"

PLAYOUT_ID = 13  # not one aiortc uses for mid (1) or abs-send-time (3)


def _offer_playout_delay(sdp: str) -> str:
    """The offer with Chrome's playout-delay ``a=extmap`` in its video section."""
    return re.sub(
        r"(m=video[^\r]*\r\n(?:(?!m=)[^\r]*\r\n)*?a=mid:[^\r]*\r\n)",
        lambda m: m.group(1) + f"a=extmap:{PLAYOUT_ID} {PLAYOUT_DELAY_URI}\r\n",
        sdp,
        count=1,
    )


def _extensions(data: bytes) -> list[tuple[int, bytes]]:
    """The header extensions of a raw (decrypted) RTP packet."""
    if not data[0] & 0x10:
        return []
    at = 12 + 4 * (data[0] & 0x0F)
    profile, words = unpack_from("!HH", data, at)
    return list(unpack_header_extensions(profile, data[at + 4 : at + 4 + 4 * words]))


def test_the_offer_s_id_is_taken_and_the_answer_gets_its_line() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
        f"a=extmap:5 {PLAYOUT_DELAY_URI}\r\na=rtpmap:96 VP8/90000\r\n"
    )
    [media] = SessionDescription.parse(offer).media
    extra = ExtraExtensions.from_offer(media)
    assert extra.playout_delay == 5
    answer = (
        "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
        "a=rtpmap:96 VP8/90000\r\n"
    )
    lines = answer_with(answer, extra).split("\r\n")
    at = lines.index(f"a=extmap:5 {PLAYOUT_DELAY_URI}")
    assert lines[at - 1].startswith("a=extmap:2 ")  # in the video section, with the others
    assert answer_with(answer, ExtraExtensions()) == answer
    # Two-byte ids (15-255) are not what aiortc writes: not taken.
    [far] = SessionDescription.parse(offer.replace("extmap:5 ", "extmap:15 ")).media
    assert ExtraExtensions.from_offer(far).playout_delay is None


async def _raw_packets(viewer: AiortcViewer, count: int) -> list[bytes]:
    """The next ``count`` decrypted RTP packets the viewer receives."""
    assert viewer.pc is not None
    dtls = viewer.pc.getTransceivers()[0].receiver.transport
    handle = dtls._handle_rtp_data
    seen: list[bytes] = []

    async def keep(data: bytes, arrival_time_ms: int) -> Any:
        seen.append(data)
        return await handle(data, arrival_time_ms)

    dtls._handle_rtp_data = keep  # type: ignore[method-assign]
    await eventually(lambda: len(seen) >= count, timeout=10)
    dtls._handle_rtp_data = handle  # type: ignore[method-assign]
    return seen


async def test_a_viewer_that_offers_playout_delay_gets_zero_on_every_packet(
    server: TestServer,
) -> None:
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    viewer.edit_offer = _offer_playout_delay
    try:
        await viewer.connect()
        assert f"a=extmap:{PLAYOUT_ID} {PLAYOUT_DELAY_URI}" in viewer.answer["sdp"]
        await viewer.wait_frames(5, timeout=15)
        packets = await _raw_packets(viewer, 30)
        for data in packets:
            assert (PLAYOUT_ID, PLAYOUT_DELAY_ZERO) in _extensions(data)
        # aiortc's own extensions are still written beside it.
        assert all(any(i == 1 for i, _ in _extensions(d)) for d in packets)  # mid
        frames = viewer.received.frames
        await viewer.wait_frames(frames + 10, timeout=10)  # the picture goes on
    finally:
        await viewer.close()


async def test_a_viewer_that_does_not_offer_it_is_answered_as_before(server: TestServer) -> None:
    viewer = AiortcViewer(ws_url(server), codec="vp8", decode_bar=False)
    try:
        await viewer.connect()
        assert PLAYOUT_DELAY_URI not in viewer.answer["sdp"]
        await viewer.wait_frames(5, timeout=15)
        packets = await _raw_packets(viewer, 10)
        assert not [x for d in packets for x in _extensions(d) if x[0] == PLAYOUT_ID]
    finally:
        await viewer.close()


@pytest.mark.parametrize("mid", [None, "0", "m" * 20])  # no extensions, one-byte, two-byte form
def test_the_elements_are_appended_in_the_form_aiortc_chose(mid: str | None) -> None:
    sender_map = SenderExtensions(ExtraExtensions(playout_delay=5, transport_cc=4))
    sender_map.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=9, uri=MID_URI)])
    )
    values = HeaderExtensions(mid=mid, transport_sequence_number=513)
    profile, data = sender_map.set(values)
    assert len(data) % 4 == 0
    elements = unpack_header_extensions(profile, data)
    assert (5, PLAYOUT_DELAY_ZERO) in elements
    assert (4, b"\x02\x01") in elements
    assert [value for i, value in elements if i == 9] == ([] if mid is None else [mid.encode()])
