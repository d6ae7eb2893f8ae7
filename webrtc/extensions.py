"""RTP header extensions aiortc does not offer: playout delay, and transport-wide sequence
numbers on padding (:mod:`webrtc.feedback` says why).

Chrome holds decoded pictures in a jitter buffer whose target follows the delay variation it
has seen, and lowers that target by at most 100 ms a second. After one queue on a slow link
(a step down, a failed probe) every picture is shown late for seconds although the network
is clear again: traces showed ages of 800 → 300 → 200 → 140 → 90 ms over 3 s with a round
trip of 1 ms. Surveillance wants the newest picture, not a smooth one, so peercam asks for a
playout delay of 0 to 0 ms (``playout-delay`` extension, min and max in 10 ms units): Chrome
then shows each picture as soon as it is decoded.

aiortc neither negotiates nor writes this extension. When the offer has it, the answer gets
its ``a=extmap`` line back (:func:`answer_with`) and the sender's header-extension map
(:class:`SenderExtensions`, in place of aiortc's own) appends it to every packet. Viewers
whose offer lacks it (Firefox, aiortc) are answered as before. ``tests/test_extensions.py``
fails when an aiortc upgrade breaks the hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import pack

from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap
from aiortc.sdp import MediaDescription

PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

#: min 0, max 0 (12 bits each, 10 ms units): show each picture as soon as it is decoded.
PLAYOUT_DELAY_ZERO = bytes(3)
#: RFC 8285's one-byte header form (ids 1-14, values of 1-16 bytes).
ONE_BYTE_PROFILE = 0xBEDE


@dataclass(frozen=True, slots=True)
class ExtraExtensions:
    """The ids a viewer's offer gave the extensions peercam adds (None: not offered)."""

    playout_delay: int | None = None
    transport_cc: int | None = None

    @classmethod
    def from_offer(cls, media: MediaDescription) -> ExtraExtensions:
        def id_of(uri: str) -> int | None:
            found = next((x.id for x in media.rtp.headerExtensions if x.uri == uri), None)
            # One-byte headers (RFC 8285) carry ids 1-14, which is all aiortc writes.
            return found if found is not None and 1 <= found <= 14 else None

        return cls(playout_delay=id_of(PLAYOUT_DELAY_URI), transport_cc=id_of(TRANSPORT_CC_URI))

    def lines(self) -> list[str]:
        return [
            f"a=extmap:{id} {uri}"
            for id, uri in (
                (self.playout_delay, PLAYOUT_DELAY_URI),
                (self.transport_cc, TRANSPORT_CC_URI),
            )
            if id is not None
        ]


def answer_with(sdp: str, extra: ExtraExtensions) -> str:
    """``sdp`` (an answer with one video section) with ``extra``'s ``a=extmap`` lines added to
    its video section, after the extensions aiortc kept (or after ``a=mid``)."""
    lines = extra.lines()
    if not lines:
        return sdp
    out = sdp.split("\r\n")
    start = next((n for n, line in enumerate(out) if line.startswith("m=video")), None)
    if start is None:
        return sdp
    end = next((n for n in range(start + 1, len(out)) if out[n].startswith("m=")), len(out))
    anchors = [n for n in range(start, end) if out[n].startswith(("a=extmap:", "a=mid:"))]
    at = (anchors[-1] if anchors else start) + 1
    return "\r\n".join([*out[:at], *lines, *out[at:]])


class SenderExtensions(HeaderExtensionsMap):
    """aiortc's map, plus the playout delay on every packet (libwebrtc repeats it until a
    frame is acknowledged; on every packet, any packet that arrives carries it), and the
    transport-wide sequence number on the packets given one (padding only)."""

    def __init__(self, extra: ExtraExtensions) -> None:
        super().__init__()
        self.extra = extra

    def set(self, values: HeaderExtensions) -> tuple[int, bytes]:
        profile, data = super().set(values)
        added = b""
        if self.extra.playout_delay is not None:
            added += _element(profile, self.extra.playout_delay, PLAYOUT_DELAY_ZERO)
        if self.extra.transport_cc is not None and values.transport_sequence_number is not None:
            sequence = pack("!H", values.transport_sequence_number)
            added += _element(profile, self.extra.transport_cc, sequence)
        if not added:
            return profile, data
        if not data:
            profile = ONE_BYTE_PROFILE
        # Appended after aiortc's elements and their zero padding, which RFC 8285 allows
        # between elements: no unpacking and packing again for every packet (a packet's
        # extensions, aiortc's part included, took 12 µs that way, 7 µs this way).
        data += added
        return profile, data + bytes(-len(data) % 4)


def _element(profile: int, id: int, value: bytes) -> bytes:
    """One header extension element in ``profile``'s form (one-byte if none yet)."""
    if profile in (ONE_BYTE_PROFILE, 0):
        return bytes([(id << 4) | (len(value) - 1)]) + value
    return bytes([id, len(value)]) + value  # the two-byte form (RFC 8285 4.3)


def install(sender: RTCRtpSender, extra: ExtraExtensions) -> None:
    """Give ``sender`` :class:`SenderExtensions` in place of aiortc's map, before it is
    configured (``RTCRtpSender.send``): aiortc's ids are configured on it as on its own."""
    if extra.lines():
        sender._RTCRtpSender__rtp_header_extensions_map = SenderExtensions(extra)  # type: ignore[attr-defined]
