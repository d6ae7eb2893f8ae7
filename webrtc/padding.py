"""Padding: extra bytes on a viewer's link, to learn whether it carries the next rung.

A receiver's bandwidth estimate (Chrome's REMB) rarely exceeds 1.5x what it receives, and grows
by ~8 % a second at most while what it receives keeps up with it. A viewer on a low rung of the
ladder is sent that rung's bitrate: its estimate stays at 1.5x that, however fast its link, and
says nothing of whether the next rung (2-3x as many bits) would fit. Switching up to find out
(a probe) costs a queue of a second or more on a link that cannot carry the rung.

Padding finds out instead, without touching the picture: during a probe the viewer is sent
its rung's media plus padding that ramps up to what the next rung would need. A link that
carries it shows nothing; one that does not shows a queue (the receiver's estimate falls, the
round trip grows) while the excess is still small, and the padding stops. The controller
(:mod:`webrtc.controller`) decides how much and when; :class:`RtxPadding` sends it, paced, as
padding-only RTP packets on the viewer's retransmission (RTX) stream: a receiver counts their
bytes and their send times (abs-send-time) in its estimate and then drops them (RFC 4588
streams carry no media of their own; libwebrtc pads the same way).

It uses aiortc's private sender state (the RTX stream's payload type, SSRC and sequence
number, the header extension map and the media id), as the sender reports do;
``tests/test_padding.py`` fails when an aiortc upgrade breaks them.

A viewer that negotiated transport-wide sequence numbers gets them on its padding packets, and
its feedback says within a tenth of a second whether the padding met a queue
(:mod:`webrtc.feedback`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiortc import RTCRtpSender, clock
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

from .feedback import PaddingDelays

logger = logging.getLogger(__name__)

#: The most padding one RTP packet carries (its last byte counts the padding, RFC 3550 5.1).
PADDING_BYTES = 255
#: What such a packet takes on the wire: RTP header (12), abs-send-time and mid extensions (~12),
#: SRTP tag (10), UDP/IP (28).
PACKET_WIRE_BYTES = PADDING_BYTES + 62
#: The pacing tick: padding goes out every 10 ms, never in a burst that is itself a queue.
TICK = 0.01
#: Between probes, a viewer that acknowledges numbered packets gets one small one this often:
#: a sonar whose delay shows a queue in its path a tenth of a second after it stands, not the
#: second or more Chrome's estimate and receiver reports take (a link that falls from 2 Mbit/s
#: to 300 kbit/s under the top rung). Its acknowledgement comes only once it has crossed the
#: queue, so the queue is read late by its own length: 20 packets a second (~2 in each 0.1 s
#: that a queue is read over, see :data:`webrtc.feedback.RECENT`), of ~70 bytes: 11 kbit/s,
#: ~0.1 % of a core.
SONAR_INTERVAL = 0.05
SONAR_PADDING = 8
#: At most this much padding is owed at once (a tick that came late does not become a burst).
MAX_OWED_BYTES = 4 * PACKET_WIRE_BYTES


class RtxPadding:
    """Padding-only RTX packets for one viewer's sender (see the module's text)."""

    def __init__(self, sender: RTCRtpSender, delays: PaddingDelays | None = None) -> None:
        self._sender = sender
        #: Numbers the padding packets for transport-wide feedback (None: not negotiated).
        self.delays = delays
        self.packets = 0
        self.bytes = 0
        #: Sending failed other than by the transport closing: padding is off for good.
        self.broken = False
        self._wanted = asyncio.Event()

    @property
    def usable(self) -> bool:
        """Whether the viewer negotiated an RTX stream and media has started on the sender."""
        sender = self._sender
        return (
            not self.broken
            and getattr(sender, "_RTCRtpSender__rtx_payload_type", None) is not None
            and bool(getattr(sender, "_RTCRtpSender__ntp_timestamp", 0))
            and getattr(sender, "_RTCRtpSender__rtx_sequence_number", None) is not None
        )

    async def send(self, count: int, size: int = PADDING_BYTES) -> None:
        """Send ``count`` padding packets of ``size`` bytes of padding (1-255) now."""
        sender = self._sender
        payload_type = getattr(sender, "_RTCRtpSender__rtx_payload_type", None)
        if payload_type is None:
            return
        extensions = sender._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]
        timestamp = getattr(sender, "_RTCRtpSender__rtp_timestamp", 0)
        mid = getattr(sender, "_RTCRtpSender__mid", None)
        for _ in range(count):
            sequence = sender._RTCRtpSender__rtx_sequence_number  # type: ignore[attr-defined]
            packet = RtpPacket(
                payload_type=payload_type,
                sequence_number=sequence,
                timestamp=timestamp,
                ssrc=sender._rtx_ssrc,
            )
            packet.padding_size = size
            packet.extensions.abs_send_time = (clock.current_ntp_time() >> 14) & 0x00FFFFFF
            packet.extensions.mid = mid
            if self.delays is not None:
                packet.extensions.transport_sequence_number = self.delays.number(time.monotonic())
            sender._RTCRtpSender__rtx_sequence_number = uint16_add(sequence, 1)  # type: ignore[attr-defined]
            await sender.transport._send_rtp(packet.serialize(extensions))
            self.packets += 1
            self.bytes += PACKET_WIRE_BYTES - PADDING_BYTES + size

    def want(self, wanted: bool) -> None:
        """Whether padding may be wanted now (a probe is on): :meth:`run` ticks only then."""
        if wanted:
            self._wanted.set()
        else:
            self._wanted.clear()

    async def run(self, rate: Callable[[], float]) -> None:
        """Pad at ``rate()`` bit/s (asked every tick; 0: none) until cancelled. Between
        probes it sleeps until :meth:`want` wakes it: most viewers never pad, and a 10 ms
        clock each would cost the server more than the rest of their viewing. A viewer whose
        packets are numbered (:attr:`delays`) gets the sonar meanwhile (``SONAR_INTERVAL``)."""
        owed = 0.0
        last = time.monotonic()
        while True:
            if not self._wanted.is_set():
                if not await self._between_probes():
                    return
                owed, last = 0.0, time.monotonic()
            await asyncio.sleep(TICK)  # the pacing clock itself
            now = time.monotonic()
            bits = rate()
            if bits <= 0 or not self.usable:
                owed, last = 0.0, now
                continue
            owed = min(MAX_OWED_BYTES, owed + bits / 8 * (now - last))
            last = now
            count = int(owed // PACKET_WIRE_BYTES)
            if count:
                owed -= count * PACKET_WIRE_BYTES
                if not await self._send_safely(count, PADDING_BYTES):
                    return

    async def _between_probes(self) -> bool:
        """Until :meth:`want` wakes it, with the sonar's packets meanwhile if they are
        numbered. False: padding must stop for good."""
        if self.delays is None:
            await self._wanted.wait()
            return True
        while not self._wanted.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SONAR_INTERVAL):  # the sonar's pace
                    await self._wanted.wait()
            sonar = not self._wanted.is_set() and self.usable
            if sonar and not await self._send_safely(1, SONAR_PADDING):
                return False
        return True

    async def _send_safely(self, count: int, size: int) -> bool:
        """:meth:`send`; False when padding must stop for good."""
        try:
            await self.send(count, size)
        except ConnectionError:
            return False  # the transport is gone: the peer is closing
        except Exception:
            # aiortc's private state not what it was: no padding for this viewer (its
            # probes switch rungs instead), and its session goes on.
            logger.warning("padding stopped", exc_info=True)
            self.broken = True
            return False
        return True
