"""Plain RTP out of a shared encoder: the feed of a media server that fans out (Janus).

An :class:`RtpSender` holds one lease on a shared encoder (:mod:`webrtc.encoders`), like a
viewer, so its frames cost no encode of their own: it reads the encoder's ring in order, has
aiortc's own packetizer (``pack()`` of its H.264 / VP8 encoder) split each ``av.Packet`` into
RTP payloads and sends them, unencrypted, to the server's RTP port. A second socket sends RTCP
sender reports to the server's RTCP port (Janus learns where to send feedback from them, and
needs them to sync) and turns the PLI/FIR the server forwards from its viewers into a keyframe
of the shared encoder.

Both sockets are asyncio datagram endpoints ("connected" UDP): nothing blocks, and an ICMP
"port unreachable" (the server has gone, or lost its mountpoint) comes back as
:attr:`RtpSender.refused`, for the owner to look into.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiortc import clock
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)

from .encoders import Codec, EncoderClosed, EncoderPool, FellBehind, SharedEncoder, VideoKey
from .errors import PeercamMediaError
from .pool import Leases

logger = logging.getLogger(__name__)

#: Sender reports go out every this many seconds, jittered by half either way (as aiortc does).
REPORT_INTERVAL = 1.0
#: Dynamic payload type of the feed (the mountpoint is created with the same).
PAYLOAD_TYPE = 96


async def first_of(*jobs: Coroutine[Any, Any, None]) -> None:
    """Run ``jobs`` as owned tasks until the first one ends; cancel the others and wait for
    them; raise what the first one raised (unlike a TaskGroup, no ExceptionGroup).

    A cancellation of the caller while the others wind down is not swallowed: it is what
    ends a feed whose Janus has just gone, at shutdown.
    """
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        cancelled = False
        while True:
            try:
                await asyncio.wait(tasks)  # raises nothing of theirs
                break
            except asyncio.CancelledError:
                cancelled = True  # still wait for them (one owner), then end as asked
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: the first one's is raised below
        if cancelled:
            raise asyncio.CancelledError
    for task in done:
        task.result()


class RtpOutputError(PeercamMediaError):
    """The feed cannot go on (its encoder stopped); the owner may start a new one."""


@dataclass(frozen=True, slots=True)
class RtpTarget:
    """Where a feed goes: the media server's RTP and RTCP ports on ``host``."""

    host: str
    rtp_port: int
    rtcp_port: int
    payload_type: int = PAYLOAD_TYPE

    def __post_init__(self) -> None:
        for port in (self.rtp_port, self.rtcp_port):
            if not 0 < port < 65536:
                raise ValueError(f"RTP target port {port}: must be 1-65535")
        if not 96 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type}: must be dynamic (96-127)")


@dataclass
class RtpCounters:
    """What the feeds of one output have sent, across reconnections (the owner keeps it)."""

    packets: int = 0
    bytes: int = 0
    frames: int = 0
    keyframes: int = 0
    #: PLI/FIR received from the server (each asks the shared encoder for a keyframe).
    keyframe_requests: int = 0
    reports: int = 0
    dropped_frames: int = 0
    #: ICMP errors on either socket (port unreachable: the server or its port is gone).
    socket_errors: int = 0


class _Endpoint(asyncio.DatagramProtocol):
    """One connected UDP socket of a sender: RTCP that arrives, errors, flow control."""

    def __init__(self, sender: RtpSender, rtcp: bool) -> None:
        self._sender = sender
        self._rtcp = rtcp

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self._rtcp:
            self._sender._on_rtcp(data)

    def error_received(self, exc: Exception) -> None:
        self._sender._on_error(exc)

    # asyncio's flow control: the kernel took no more and asyncio buffers (past its high-water
    # mark). Frames are dropped until it drains and a keyframe comes: a stuck socket costs no
    # memory and never slows the encoder.
    def pause_writing(self) -> None:
        self._sender._paused = True

    def resume_writing(self) -> None:
        self._sender._paused = False


class RtpSender:
    """Sends one shared encoder's stream as plain RTP to ``target`` while the block runs.

    ``async with RtpSender(...) as sender: await sender.run()``: entering takes the encoder's
    lease and opens both sockets; :meth:`run` sends until cancelled, or raises
    :class:`RtpOutputError`; leaving closes the sockets and releases the lease.
    """

    def __init__(
        self, encoders: EncoderPool, key: VideoKey, target: RtpTarget, *,
        counters: RtpCounters | None = None, name: str = "rtp",
    ) -> None:  # fmt: skip
        self.key = key
        self.target = target
        self.counters = counters if counters is not None else RtpCounters()
        self.name = name
        #: Set when a socket reports "connection refused" (nothing listens at the target).
        self.refused = asyncio.Event()
        self._leases: Leases[VideoKey, SharedEncoder] = encoders.leases()
        self._encoder: SharedEncoder | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._packer = H264Encoder() if key.codec is Codec.H264 else Vp8Encoder()
        self._ssrc = random.getrandbits(32)
        self._sequence = random.getrandbits(16)
        self._timestamp_origin = random.getrandbits(32)
        self._last_ntp = 0
        self._last_rtp_timestamp = 0
        self._packets = 0
        self._octets = 0
        self._cname = f"peercam-{self._ssrc:08x}".encode()
        self._paused = False

    @property
    def encoder(self) -> SharedEncoder | None:
        return self._encoder

    async def __aenter__(self) -> RtpSender:
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            rtp, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self, rtcp=False),
                remote_addr=(self.target.host, self.target.rtp_port),
            )
            stack.callback(rtp.close)
            rtcp, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self, rtcp=True),
                remote_addr=(self.target.host, self.target.rtcp_port),
            )
            stack.callback(rtcp.close)
            await stack.enter_async_context(self._leases)
            self._encoder = self._leases.take(self.key)
            self._rtp, self._rtcp = rtp, rtcp
            stack.pop_all()
        logger.info(
            "%s: RTP of %s to %s:%d (RTCP %d)",
            self.name,
            self.key,
            self.target.host,
            self.target.rtp_port,
            self.target.rtcp_port,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        self._rtp = self._rtcp = None
        self._encoder = None
        await self._leases.__aexit__(exc_type, exc, tb)

    async def run(self) -> None:
        """Send media and reports until cancelled.

        Raises:
            RtpOutputError: the shared encoder stopped.
        """
        await first_of(self._send_media(), self._report())

    async def _send_media(self) -> None:
        encoder = self._encoder
        rtp = self._rtp
        if encoder is None or rtp is None:
            raise RuntimeError("RtpSender.run() outside its async with block")
        after = encoder.newest_seq
        synced = False
        encoder.request_keyframe()  # the server's viewers can decode from the first frame on
        while True:
            try:
                item = await encoder.next_frame(after)
            except FellBehind:  # the loop stalled: jump to the present, wait for a keyframe
                after, synced = encoder.newest_seq, False
                encoder.request_keyframe()
                continue
            except EncoderClosed:
                raise RtpOutputError(f"{self.name}: the encoder {self.key} stopped") from None
            after = item.seq
            if self._paused:
                self.counters.dropped_frames += 1
                synced = False
                continue
            if not synced:
                if not item.keyframe:
                    continue
                synced = True
            payloads, timestamp = self._packer.pack(item.packet)
            timestamp = (self._timestamp_origin + timestamp) & 0xFFFFFFFF
            for i, payload in enumerate(payloads):
                packet = RtpPacket(
                    payload_type=self.target.payload_type,
                    marker=int(i == len(payloads) - 1),
                    sequence_number=self._sequence,
                    timestamp=timestamp,
                    ssrc=self._ssrc,
                    payload=payload,
                )
                data = packet.serialize()
                rtp.sendto(data)
                self._sequence = (self._sequence + 1) & 0xFFFF
                self._packets += 1
                self._octets += len(payload)
                self.counters.packets += 1
                self.counters.bytes += len(data)
            self._last_ntp = clock.current_ntp_time()
            self._last_rtp_timestamp = timestamp
            self.counters.frames += 1
            self.counters.keyframes += item.keyframe

    async def _report(self) -> None:
        """A sender report now (the server latches its feedback address on it), then about
        every ``REPORT_INTERVAL``."""
        while True:
            rtcp = self._rtcp
            if rtcp is None:
                return
            report = RtcpSrPacket(
                ssrc=self._ssrc,
                sender_info=RtcpSenderInfo(
                    ntp_timestamp=self._last_ntp or clock.current_ntp_time(),
                    rtp_timestamp=self._last_rtp_timestamp,
                    packet_count=self._packets & 0xFFFFFFFF,
                    octet_count=self._octets & 0xFFFFFFFF,
                ),
            )
            sdes = RtcpSdesPacket(
                chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, self._cname)])]
            )
            rtcp.sendto(bytes(report) + bytes(sdes))
            self.counters.reports += 1
            await asyncio.sleep(REPORT_INTERVAL * (0.5 + random.random()))

    def _on_rtcp(self, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            logger.debug("%s: RTCP that does not parse (%d bytes)", self.name, len(data))
            return
        for packet in packets:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.counters.keyframe_requests += 1
                if self._encoder is not None:
                    self._encoder.request_keyframe()

    def _on_error(self, exc: Exception) -> None:
        self.counters.socket_errors += 1
        if isinstance(exc, ConnectionRefusedError):
            self.refused.set()
        else:
            logger.debug("%s: socket error %r", self.name, exc)
