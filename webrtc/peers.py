"""Viewer peer connections: offer in, answer out, the viewer's rung, and a guaranteed end.

The viewer offers (recvonly video, as WHEP does); the server answers with aiortc and every one
of its candidates. A :class:`Peer`'s :meth:`~Peer.run` is the one owner of the viewer's media:
it holds the viewer's encoder leases, runs its rung controller, and closes the peer connection
when ICE has not connected within the timeout, the connection goes ``failed`` or ``closed``, or
the session ends it. :class:`PeerManager` owns every peer and closes them all on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)
from aiortc.sdp import SessionDescription, candidate_from_sdp

from . import extensions, feedback, ice
from .controller import RungController, wire_bitrate
from .encoders import Codec, EncoderPool, SharedEncoder, VideoKey, default_bitrate
from .errors import NegotiationError
from .frames import CapturedFrame
from .ladder import Ladder, LadderSpec
from .latest import Latest, LatestClosed
from .padding import RtxPadding
from .pool import Leases
from .tracks import EncodedVideoTrack, RawVideoTrack

logger = logging.getLogger(__name__)

H264_PROFILE_LEVEL_ID = "42e01f"  # constrained baseline, level 3.1


@dataclass(frozen=True, slots=True)
class WebRtcSettings:
    """What every viewer's peer connection is made with."""

    codecs: tuple[Codec, ...] = (Codec.VP8, Codec.H264)
    ice_servers: tuple[ice.IceServer, ...] = ()
    turn_secret: ice.TurnSecret | None = None
    ice_addresses: tuple[str, ...] = ()
    advertise_addresses: tuple[str, ...] = ()
    #: Every ICE host socket is bound in this range (``--udp-ports``); None: ephemeral ports.
    udp_ports: ice.PortRange | None = None
    relay_only: bool = False
    connect_timeout: float = 20.0
    #: aiortc's usual way, one encoder per viewer: kept only to measure what sharing saves.
    per_viewer_encoding: bool = False

    def __post_init__(self) -> None:
        if not self.codecs:
            raise ValueError("at least one codec is needed")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")

    def ice_servers_for(self, viewer_id: str) -> tuple[ice.IceServer, ...]:
        """The ICE servers one viewer (and its server-side peer) use: static ones, then a
        TURN entry with credentials minted for this viewer when a TURN secret is set."""
        if self.turn_secret is None:
            return self.ice_servers
        return (*self.ice_servers, self.turn_secret.mint(viewer_id))


@dataclass(frozen=True, slots=True)
class ViewerHints:
    """What the server knows of a viewer's device, from its User-Agent."""

    prefer_h264: bool = False
    max_height: int = 0  # cap on H.264 height; 0: none

    @classmethod
    def from_user_agent(cls, user_agent: str) -> ViewerHints:
        """Safari and every iOS browser (all WebKit) get H.264 first; iOS at most 720p
        (constrained baseline level 3.1, which its hardware decoder enforces)."""
        ios = any(d in user_agent for d in ("iPhone", "iPad", "iPod")) or (
            "Macintosh" in user_agent and "Mobile/" in user_agent  # iPadOS asking for desktop
        )
        others = ("Chrome/", "Chromium/", "CriOS/", "FxiOS/", "Edg/", "OPR/", "Android")
        safari = "Safari/" in user_agent and not any(o in user_agent for o in others)
        return cls(prefer_h264=ios or safari, max_height=720 if ios or safari else 0)


@dataclass(frozen=True, slots=True)
class Answer:
    sdp: str
    codec: Codec


def _codec_preferences(
    offer: SessionDescription, allowed: tuple[Codec, ...], *, prefer_h264: bool = False
) -> list[Any]:
    """The allowed codecs in the order the viewer prefers them, then RTX.

    The viewer's order wins (a page may prefer H.264 with setCodecPreferences), except that
    H.264 goes first for viewers that decode it best (Safari, iOS); codecs the server does not
    allow are left out.
    """
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    order: list[Codec] = []
    for media in offer.media:
        if media.kind != "video":
            continue
        for offered in media.rtp.codecs:
            try:
                ours = Codec.from_mime_type(offered.mimeType)
            except ValueError:
                continue
            if ours in allowed and ours not in order:
                order.append(ours)
    if prefer_h264 and Codec.H264 in order:
        order.remove(Codec.H264)
        order.insert(0, Codec.H264)
    preferences: list[RTCRtpCodecCapability] = []
    for codec in order:
        for capability in capabilities:
            if capability.mimeType.lower() != codec.mime_type.lower():
                continue
            if codec is Codec.H264 and (
                capability.parameters.get("profile-level-id") != H264_PROFILE_LEVEL_ID
            ):
                continue
            preferences.append(capability)
    preferences += [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
    return preferences


def _negotiated_codec(transceiver: RTCRtpTransceiver, answer_sdp: str) -> Codec:
    description = SessionDescription.parse(answer_sdp)
    for media in description.media:
        if media.kind == "video" and media.rtp.muxId == transceiver.mid and media.rtp.codecs:
            return Codec.from_mime_type(media.rtp.codecs[0].mimeType)
    raise NegotiationError("invalid-sdp", "no video codec in common")


@dataclass(frozen=True, slots=True)
class RungInfo:
    """What a viewer is sent now: its rung of the ladder (for the page's overlay)."""

    index: int
    count: int
    width: int
    height: int
    bitrate: int
    reason: str

    def to_json(self) -> dict[str, int | str]:
        return {
            "index": self.index,
            "count": self.count,
            "width": self.width,
            "height": self.height,
            "bitrate": self.bitrate,
            "reason": self.reason,
        }


#: How often a viewer's controller looks at its reports (seconds): a step down comes within
#: about a second of congestion, so a few looks a second are plenty.
CONTROL_INTERVAL = 0.25


class Peer:
    """One viewer's WebRTC session.

    :meth:`answer` negotiates; :meth:`run` then serves the viewer until the connection ends and
    is the one owner of everything the viewer holds: its encoder leases (``async with``), its
    rung controller and the close of its peer connection. :meth:`end` asks it to stop.
    """

    def __init__(
        self, manager: PeerManager, viewer_id: str, ice_servers: tuple[ice.IceServer, ...]
    ) -> None:
        self.viewer_id = viewer_id
        self._manager = manager
        settings = manager.settings
        self._pc = RTCPeerConnection(
            RTCConfiguration(
                # Always a list: None would make aiortc add a public STUN server of its own.
                iceServers=[s.to_aiortc() for s in ice_servers],
                iceTransportPolicy=(
                    RTCIceTransportPolicy.RELAY
                    if settings.relay_only
                    else RTCIceTransportPolicy.ALL
                ),
            )
        )
        self._track: EncodedVideoTrack | RawVideoTrack
        if settings.per_viewer_encoding:
            self._track = RawVideoTrack(manager.frames)
        else:
            self._track = EncodedVideoTrack()
        self._transceiver: RTCRtpTransceiver | None = None
        self._hints = ViewerHints()
        #: The header extensions peercam adds for this viewer (webrtc/extensions.py).
        self._extra = extensions.ExtraExtensions()
        self.codec: Codec | None = None
        self._keys: list[VideoKey] = []
        self._controller: RungController | None = None
        self._reports: SenderReports | None = None
        self._padding: RtxPadding | None = None
        self._connected = asyncio.Event()
        self._ended = asyncio.Event()
        #: Set when feedback shows a queue: the controller looks at once, not at its next tick.
        self._look = asyncio.Event()
        self._running = False
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._pc.on("connectionstatechange", self._on_state)

    @property
    def connection_state(self) -> str:
        return str(self._pc.connectionState)

    @property
    def frames_sent(self) -> int:
        return self._track.frames_sent

    @property
    def resyncs(self) -> int:
        """How often this viewer fell out of the shared ring and waited for a keyframe."""
        return self._track.resyncs if isinstance(self._track, EncodedVideoTrack) else 0

    def _on_state(self) -> None:
        state = self._pc.connectionState
        logger.debug("viewer %s: connection %s", self.viewer_id, state)
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed"):
            self.end(f"connection {state}")

    async def answer(self, offer_sdp: str, hints: ViewerHints | None = None) -> Answer:
        """Apply the viewer's offer and make the answer, with every server candidate in it.

        Raises:
            NegotiationError: the offer is not one this server can answer.
        """
        if self._transceiver is not None:
            raise NegotiationError("unexpected", "this session already has an offer")
        hints = self._hints = hints or ViewerHints()
        try:
            parsed = SessionDescription.parse(offer_sdp)
        except Exception as exc:  # aiortc's parser raises whatever the text provokes
            raise NegotiationError("invalid-sdp", f"the offer does not parse: {exc}") from exc
        if not any(m.kind == "video" for m in parsed.media):
            raise NegotiationError("invalid-sdp", "the offer has no video section")
        # A passed-through source's H.264 costs no encode: it wins whenever it is offered.
        prefer_h264 = hints.prefer_h264 or self._manager.encoders.preferred_codec is Codec.H264
        preferences = _codec_preferences(
            parsed, self._manager.settings.codecs, prefer_h264=prefer_h264
        )
        if not any(p.mimeType.lower() != "video/rtx" for p in preferences):
            allowed = ", ".join(c.mime_type for c in self._manager.settings.codecs)
            raise NegotiationError("no-codec", f"the offer has none of the codecs {allowed}")
        self._transceiver = self._pc.addTransceiver(self._track, direction="sendonly")
        self._transceiver.setCodecPreferences(preferences)
        video = next(m for m in parsed.media if m.kind == "video")
        extra = self._extra = extensions.ExtraExtensions.from_offer(video)
        extensions.install(self._transceiver.sender, extra)
        try:
            settings = self._manager.settings
            with ice.announce_only(settings.ice_addresses), ice.bind_within(settings.udp_ports):
                await self._pc.setRemoteDescription(
                    RTCSessionDescription(sdp=offer_sdp, type="offer")
                )
                await self._pc.setLocalDescription(await self._pc.createAnswer())
        except NegotiationError:  # NoUdpPort, from gathering: passed on with its own code
            raise
        except Exception as exc:  # aiortc raises ValueError, InvalidStateError, OperationError…
            raise NegotiationError("invalid-sdp", f"the offer was refused: {exc}") from exc
        local = self._pc.localDescription
        self.codec = _negotiated_codec(self._transceiver, local.sdp)
        answer_sdp = extensions.answer_with(
            ice.advertise(local.sdp, self._manager.settings.advertise_addresses), extra
        )
        logger.info("viewer %s: WebRTC answered with %s", self.viewer_id, self.codec)
        return Answer(sdp=answer_sdp, codec=self.codec)

    async def add_candidate(
        self, candidate: str | None, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        """Add a trickled remote candidate; None (or "") marks the end of candidates (ignored).

        Raises:
            NegotiationError: no offer yet, or the candidate is malformed.
        """
        if self._transceiver is None:
            raise NegotiationError("unexpected", "a candidate came before the offer")
        if sdp_mid is not None and sdp_mid != self._transceiver.mid:
            raise NegotiationError("invalid-candidate", f"unknown sdpMid {sdp_mid!r}")
        if sdp_mline_index is not None and sdp_mline_index != 0:
            raise NegotiationError("invalid-candidate", f"unknown sdpMLineIndex {sdp_mline_index}")
        if not candidate:
            # End-of-candidates is not passed on: aioice would then fail at once if the
            # browser's only usable address is still to be learnt from its first check
            # (peer-reflexive: loopback, mDNS names, LAN addresses that cannot pair). A peer
            # that never connects is ended by the connect timeout instead.
            return
        try:
            parsed = candidate_from_sdp(candidate.removeprefix("candidate:"))
        except Exception as exc:
            raise NegotiationError(
                "invalid-candidate", f"the candidate does not parse: {exc}"
            ) from exc
        parsed.sdpMid = self._transceiver.mid
        parsed.sdpMLineIndex = 0
        try:
            await self._pc.addIceCandidate(parsed)
        except Exception as exc:
            raise NegotiationError(
                "invalid-candidate", f"the candidate was refused: {exc}"
            ) from exc

    # -- serving ----------------------------------------------------------------------------

    def request_keyframe(self) -> None:
        """The viewer's page saw no picture for a while: an IDR of its rung."""
        if isinstance(self._track, EncodedVideoTrack):
            self._track.request_keyframe()

    def end(self, reason: str) -> None:
        """Ask :meth:`run` to stop (idempotent); the first reason given is kept."""
        self.close_reason = self.close_reason or reason
        self._ended.set()
        self._look.set()

    async def run(self, on_rung: Callable[[RungInfo], Awaitable[None]] | None = None) -> None:
        """Serve the viewer until its connection ends, it does not connect within the
        timeout, or :meth:`end` is called; the peer connection is closed when this returns.

        ``on_rung`` is awaited with the viewer's rung once connected and after each change.
        """
        if self._transceiver is None or self.codec is None:
            raise RuntimeError("run() needs a successful answer() first")
        self._running = True
        try:
            if isinstance(self._track, EncodedVideoTrack):
                async with self._manager.encoders.leases() as leases:
                    await self._serve(self._track, leases, on_rung)
            elif await self._wait_connected():
                await self._ended.wait()
        finally:
            # Only start the close and wait for it shielded: a cancel that reaches
            # RTCPeerConnection.close() midway breaks aiortc's own close.
            await asyncio.shield(self._begin_close())

    async def _wait_connected(self) -> bool:
        timeout = self._manager.settings.connect_timeout
        connected = asyncio.ensure_future(self._connected.wait())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            # Connected, or failed/closed before that, or neither in time.
            await asyncio.wait((connected, ended), timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            connected.cancel()
            ended.cancel()
        if self._ended.is_set():
            logger.info("viewer %s: %s before connecting", self.viewer_id, self.close_reason)
            return False
        if not self._connected.is_set():
            self.end(f"not connected within {timeout:g} s")
            logger.info("viewer %s: %s", self.viewer_id, self.close_reason)
            return False
        logger.info("viewer %s: WebRTC connected", self.viewer_id)
        return True

    async def _serve(
        self, track: EncodedVideoTrack, leases: Leases[VideoKey, SharedEncoder],
        on_rung: Callable[[RungInfo], Awaitable[None]] | None,
    ) -> None:  # fmt: skip
        assert self.codec is not None
        assert self._transceiver is not None
        newest = self._manager.frames.get()
        if newest is None:  # the server has just started: rungs follow the source's size
            try:
                async with asyncio.timeout(self._manager.settings.connect_timeout):
                    newest = await self._manager.frames.next(0)
            except (TimeoutError, LatestClosed):
                self.end("the source delivers no picture")
                return
        ladder = self._manager.ladder_for(newest[1].width, newest[1].height)
        cap = self._hints.max_height if self.codec is Codec.H264 else 0
        self._keys = [
            VideoKey(self.codec, _capped(r.height, cap), r.bitrate, r.fps) for r in ladder.rungs
        ]
        fps = self._manager.source_fps
        # Start at the top: most links carry it, and a slow one is stepped down once its
        # receiver reports the queue. (Starting lower and probing up at once would spare slow
        # links their first seconds, but not every receiver's early estimate means a queue:
        # aiortc's comes early on any link, Chrome's only on congestion.)
        start = 0
        controller = self._controller = RungController(
            [wire_bitrate(r.bitrate, r.fps or fps) for r in ladder.rungs],
            start=start,
            now=time.monotonic(),
        )
        track.attach(leases.take(self._keys[start]))
        reports = self._reports = SenderReports(self._transceiver.sender)
        _hook_sender(self._transceiver.sender, track, controller, reports)
        if not await self._wait_connected():
            return
        sender = self._transceiver.sender
        delays = feedback.PaddingDelays() if self._extra.transport_cc is not None else None
        if delays is not None:
            _hook_feedback(sender, delays, controller, self._look.set)
        padding = self._padding = RtxPadding(sender, delays)
        padder = None
        if len(self._keys) > 1:
            padder = asyncio.create_task(
                padding.run(lambda: controller.padding_rate(time.monotonic())),
                name=f"padding {self.viewer_id}",
            )
        try:
            await self._control(track, leases, controller, reports, padding, on_rung)
        finally:
            if padder is not None:
                padder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await padder

    async def _control(
        self, track: EncodedVideoTrack, leases: Leases[VideoKey, SharedEncoder],
        controller: RungController, reports: SenderReports, padding: RtxPadding,
        on_rung: Callable[[RungInfo], Awaitable[None]] | None,
    ) -> None:  # fmt: skip
        """The controller's loop: its decisions applied every ``CONTROL_INTERVAL``."""
        shown: SharedEncoder | None = None
        reported = -math.inf
        while not self._ended.is_set():
            if track.encoder is not shown and on_rung is not None:
                shown = track.encoder
                await on_rung(self.rung_info())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONTROL_INTERVAL):  # the controller's pace
                    await self._look.wait()  # feedback that showed a queue, or the end
            self._look.clear()
            if self._ended.is_set():
                break
            now = time.monotonic()
            if len(self._keys) > 1 and now - reported >= CONTROL_INTERVAL:
                reported = now  # one sender report a tick, however often feedback wakes it
                await reports.send()
            controller.on_sent(track.bytes_sent, now)
            controller.can_pad = padding.usable
            decision = controller.decide(now)
            padding.want(controller.warm is not None)  # a padding probe is on
            if decision is not None and len(self._keys) > 1:
                logger.info(
                    "viewer %s: rung %d (%s): %s",
                    self.viewer_id,
                    decision.index,
                    self._keys[decision.index],
                    decision.reason,
                )
                track.switch(leases.take(self._keys[decision.index]))
            if controller.holding(now):
                track.hold()  # and the budget forgets what is in the queue (on_hold)
            else:
                track.resume()
            # Held: the rung sent now, the one being switched to, and during a probe the one
            # to fall back to (so that going back needs no encoder start).
            keep = [e for e in (track.encoder, track.pending) if e is not None]
            if controller.probe_from is not None:
                keep.append(leases.take(self._keys[controller.probe_from]))
            if controller.warm is not None:  # a padding probe's rung: ready if it passes
                keep.append(leases.take(self._keys[controller.warm]))
            leases.keep_only(keep)

    def rung_info(self) -> RungInfo:
        """The rung this viewer gets now (the top one before the track has one)."""
        encoder = self._track.encoder if isinstance(self._track, EncodedVideoTrack) else None
        count = len(self._keys) or 1
        if encoder is None:
            return RungInfo(0, count, 0, 0, 0, "")
        index = self._keys.index(encoder.key) if encoder.key in self._keys else 0
        width, height = encoder.size or (0, 0)
        reason = self._controller.last_reason if self._controller else ""
        return RungInfo(index, count, width, height, encoder.bitrate, reason)

    def stats(self) -> dict[str, object]:
        """This viewer's figures for /api/status."""
        track = self._track
        info: dict[str, object] = {
            "viewerId": self.viewer_id,
            "codec": str(self.codec) if self.codec else None,
            "state": self.connection_state,
            "framesSent": track.frames_sent,
            "resyncs": self.resyncs,
        }
        if isinstance(track, EncodedVideoTrack):
            controller = self._controller
            encoder = track.encoder
            rtt = controller.rtt if controller else None
            info |= {
                "rung": str(encoder.key) if encoder else None,
                "rungIndex": self.rung_info().index,
                "rungs": len(self._keys),
                "estimateBps": controller.estimate if controller else None,
                "fractionLost": round(controller.fraction_lost, 3) if controller else None,
                "rttMs": None if rtt is None else round(rtt * 1000, 1),
                "probing": bool(controller and controller.probing),
                "rungReason": controller.last_reason if controller else None,
                "rungSwitches": track.switches,
                # Pauses of the media for a long queue to drain (webrtc/controller.py).
                "holds": controller.holds if controller else 0,
                "holding": track.held,
                "keyframesSent": track.keyframes_sent,
                "restarts": track.restarts,  # PLIs answered from a pass-through's cache
                "senderReports": self._reports.sent if self._reports else 0,
                # Padding so far (webrtc/padding.py): what the viewer was sent to learn its link.
                "paddingBytes": self._padding.bytes if self._padding else 0,
                "paddingBps": round(controller.padding) if controller else 0,
            }
            delays = self._padding.delays if self._padding else None
            if delays is not None:  # transport-wide feedback on the padding (webrtc/feedback.py)
                queue = delays.queue()
                info["paddingAcked"] = delays.acknowledged
                info["paddingQueueMs"] = None if queue is None else round(queue * 1000, 1)
        return info

    async def aclose(self, reason: str = "closed by the server") -> None:
        """End the session and wait until its peer connection is closed (idempotent)."""
        self.end(reason)
        if not self._running:
            await asyncio.shield(self._begin_close())
        await self.closed.wait()

    def _begin_close(self) -> asyncio.Task[None]:
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(), name=f"peercam-peer-close-{self.viewer_id}"
            )
        return self._close_task

    async def _close(self) -> None:
        try:
            await self._pc.close()
        finally:
            self._track.stop()
            self._manager._forget(self)
            self.closed.set()
            logger.info("viewer %s: WebRTC closed (%s)", self.viewer_id, self.close_reason)


def _capped(height: int, cap: int) -> int:
    """A rung's height under a device's cap (0: none)."""
    if not cap:
        return height
    return min(height, cap) if height else cap


class SenderReports:
    """Sender reports of one viewer's RTP sender, more often than aiortc's own (every 0.5-1.5
    s), and the round trip of each receiver report that answers one.

    The round trip is the controller's view of the queue in the viewer's path, as of the
    sender report it answers: with one a second, a queue that a probe builds shows a second or
    more late; with one every control tick (0.25 s), within about a receiver report's
    interval. A sender report is ~50 bytes. It uses aiortc's private counters, as aiortc's own
    reports do (``tests/test_ladder.py`` fails when an upgrade breaks them).
    """

    KEEP = 32  # reports remembered: a receiver answers the newest it got, seconds at most late

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender
        self._sent: dict[int, float] = {}  # LSR (middle 32 bits of the NTP time) -> time.time()
        self.sent = 0

    def _remember(self, lsr: int, at: float) -> None:
        self._sent[lsr] = at
        while len(self._sent) > self.KEEP:
            del self._sent[next(iter(self._sent))]

    async def send(self) -> None:
        """Send one sender report now (nothing before the first RTP packet)."""
        sender = self._sender
        ntp = getattr(sender, "_RTCRtpSender__ntp_timestamp", 0)
        if not ntp:
            return
        report = RtcpSrPacket(
            ssrc=sender._ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=getattr(sender, "_RTCRtpSender__rtp_timestamp", 0),
                packet_count=getattr(sender, "_RTCRtpSender__packet_count", 0) & 0xFFFFFFFF,
                octet_count=getattr(sender, "_RTCRtpSender__octet_count", 0) & 0xFFFFFFFF,
            ),
        )
        self._remember((ntp >> 16) & 0xFFFFFFFF, time.time())
        self.sent += 1
        await sender._send_rtcp([report])

    def round_trip(self, lsr: int, dlsr: int) -> float | None:
        """The round trip of a receiver report answering the sender report ``lsr`` after
        ``dlsr`` (1/65536 s); None if no report of ours (or aiortc's) had that LSR."""
        if not lsr:
            return None
        # aiortc's own latest report, too (it keeps only that one).
        own = getattr(self._sender, "_RTCRtpSender__lsr", None)
        own_at = getattr(self._sender, "_RTCRtpSender__lsr_time", None)
        if own is not None and own_at is not None and own not in self._sent:
            self._remember(own, own_at)
        sent_at = self._sent.get(lsr)
        return None if sent_at is None else time.time() - sent_at - dlsr / 65536


def _hook_sender(
    sender: RTCRtpSender,
    track: EncodedVideoTrack,
    controller: RungController,
    reports: SenderReports,
) -> None:
    """Route the viewer's RTCP to the shared encoders and its controller.

    aiortc answers a PLI/FIR by flagging its own (unused) encoder and applies REMB only to it:
    ``_send_keyframe`` goes to the track instead (an IDR of the viewer's rung, rate-limited for
    everyone on it), and every RTCP packet is shown to the controller after aiortc has handled
    it (which updates the round-trip time it computes from receiver reports). Private parts of
    aiortc: ``tests/test_ladder.py`` fails when an upgrade breaks them.
    """
    handle = sender._handle_rtcp_packet
    sender._send_keyframe = track.request_keyframe  # type: ignore[method-assign]

    async def observe(packet: Any) -> None:
        await handle(packet)
        now = time.monotonic()
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    # The round trip of this report alone: aiortc's own figure is smoothed
                    # over many reports, far too slow to show a queue that builds or drains.
                    rtt = reports.round_trip(report.lsr, report.dlsr)
                    controller.on_receiver_report(
                        report.fraction_lost / 256, rtt, now,
                        lost=report.packets_lost, highest=report.highest_sequence,
                    )  # fmt: skip
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if sender._ssrc in ssrcs:
                controller.on_remb(bitrate, now)

    sender._handle_rtcp_packet = observe  # type: ignore[method-assign]
    budget = RetransmitBudget(
        sender._retransmit,
        track,
        lambda: controller.queue(time.monotonic()),
        # aiortc's history of sent packets, what it can resend (private, as above).
        lambda: [p.sequence_number for p in getattr(sender, _RTP_HISTORY, {}).values()],
    )
    sender._retransmit = budget  # type: ignore[method-assign]
    track.on_hold = budget.drop_sent  # what is in the queue as a pause begins is late: never again


_RTP_HISTORY = "_RTCRtpSender__rtp_history"


def _hook_feedback(
    sender: RTCRtpSender, delays: feedback.PaddingDelays, controller: RungController,
    look: Callable[[], None],
) -> None:  # fmt: skip
    """Show the viewer's transport-wide feedback (:mod:`webrtc.feedback`) to ``delays`` and
    the queue it finds to the controller (``look``: there is a queue, it should look now).
    aiortc parses that feedback as a NACK of nonsense and drops it (wrong format): it is read
    from the transport's decrypted RTCP, before."""
    transport = sender.transport
    handle = transport._handle_rtcp_data

    async def tap(data: bytes) -> None:
        await handle(data)
        messages = list(feedback.feedback_messages(data))
        for fci in messages:
            delays.on_feedback(fci)
        latest = delays.latest() if messages else None
        if latest is not None:
            sent, queue = latest
            controller.on_padding_queue(queue, sent, time.monotonic())
            if queue >= QUEUE_LOOK:
                look()

    transport._handle_rtcp_data = tap  # type: ignore[method-assign]


#: Feedback that shows this much queue (seconds) has the controller look at once: a link that
#: falls below the rung fills a second of queue within half a second.
QUEUE_LOOK = 0.04

#: Retransmissions a viewer may cause, as a share of its rung's bitrate: on a congested link a
#: receiver asks again and again for what the queue dropped, and unbounded answers (aiortc's
#: way) fill the link with old packets until nothing new gets through.
RTX_SHARE = 0.25
RTX_PACKET_BITS = 1200 * 8
RTX_MIN_RATE = 5.0  # packets a second, whatever the rung
RTX_PER_PACKET = 2  # times one packet is sent again, at most
RTX_LATE = 0.25  # seconds of queue in the viewer's path from which nothing is resent
RTX_STALE_FOR = 30.0  # seconds for which packets sent before a pause are never resent


class RetransmitBudget:
    """``RTCRtpSender._retransmit`` (NACK answers) under a token bucket and a per-packet cap,
    and none into a long queue.

    A packet resent into ``RTX_LATE`` or more of queue arrives after its picture was due and
    only makes the queue longer: a 150 kbit/s viewer that starts on the top rung loses half its
    packets to the full queue, and their resends (5 a second, ~48 kbit/s) beside the bottom
    rung's 64 kept ~1 s of queue standing for 6 s. The viewer recovers with the IDR it asks for.
    Nothing is resent while the track is held (its media paused for a queue to drain), nor
    afterwards any packet sent before the pause (:meth:`drop_sent`): those pictures are long
    late, and their resends (the receiver asks for them for seconds; up to a quarter of the
    top rung's bitrate, and the bottom rung's budget after) kept ~0.6 s of a 150 kbit/s
    viewer's queue standing through and after a 2 s pause.
    """

    def __init__(
        self,
        retransmit: Callable[[int], Awaitable[None]],
        track: EncodedVideoTrack,
        queue: Callable[[], float],
        sent: Callable[[], Iterable[int]],
    ) -> None:
        """``queue``: seconds of queue in the viewer's path now (its controller's view);
        ``sent``: the sequence numbers of the packets the sender could resend now."""
        self._retransmit = retransmit
        self._track = track
        self._queue = queue
        self._sent_now = sent
        self._stale: frozenset[int] = frozenset()
        self._stale_until = -math.inf
        self._tokens = RTX_MIN_RATE
        self._last = time.monotonic()
        self._sent: dict[int, int] = {}
        self.refused = 0

    async def __call__(self, sequence_number: int) -> None:
        now = time.monotonic()
        encoder = self._track.encoder
        rate = max(RTX_MIN_RATE, (encoder.bitrate if encoder else 0) * RTX_SHARE / RTX_PACKET_BITS)
        self._tokens = min(rate, self._tokens + (now - self._last) * rate)
        self._last = now
        times = self._sent.get(sequence_number, 0)
        if (
            self._tokens < 1
            or times >= RTX_PER_PACKET
            or self._track.held
            or (sequence_number in self._stale and now < self._stale_until)
            or self._queue() >= RTX_LATE
        ):
            self.refused += 1
            return
        self._tokens -= 1
        self._sent[sequence_number] = times + 1
        if len(self._sent) > 1024:  # sequence numbers wrap: remember the recent ones only
            for old in list(self._sent)[:512]:
                del self._sent[old]
        await self._retransmit(sequence_number)

    def drop_sent(self) -> None:
        """Never resend what was sent until now (the media are paused for the queue it
        made to drain). Forgotten after ``RTX_STALE_FOR``: sequence numbers wrap."""
        self._stale = frozenset(self._sent_now())
        self._stale_until = time.monotonic() + RTX_STALE_FOR


@dataclass
class PeerManager:
    """Owns every viewer's peer connection."""

    settings: WebRtcSettings
    encoders: EncoderPool
    frames: Latest[CapturedFrame]
    ladder_spec: LadderSpec = field(default_factory=LadderSpec)
    #: The top rung's bitrate (``--bitrate``); None: by size.
    bitrate: int | None = None
    source_fps: float = 30.0
    _peers: set[Peer] = field(default_factory=set)
    _ladders: dict[tuple[int, int], Ladder] = field(default_factory=dict)

    def ladder_for(self, width: int, height: int) -> Ladder:
        """The ladder of a source of this size (a camera may reopen at another)."""
        ladder = self._ladders.get((width, height))
        if ladder is None:
            top = self.bitrate or default_bitrate(width, height, self.source_fps)
            ladder = self.ladder_spec.resolve(width, height, self.source_fps, top)
            self._ladders = {(width, height): ladder}
            logger.info("ladder for %dx%d: %s", width, height, ladder)
        return ladder

    def create(self, viewer_id: str, ice_servers: tuple[ice.IceServer, ...] | None = None) -> Peer:
        if ice_servers is None:
            ice_servers = self.settings.ice_servers_for(viewer_id)
        peer = Peer(self, viewer_id, ice_servers)
        self._peers.add(peer)
        return peer

    def _forget(self, peer: Peer) -> None:
        self._peers.discard(peer)

    def __len__(self) -> int:
        return len(self._peers)

    def peers(self) -> list[Peer]:
        return list(self._peers)

    async def aclose(self, timeout: float = 2.0) -> None:
        """Close every peer; give up waiting after ``timeout`` (a peer whose TURN server is
        gone takes aioice a minute of retransmissions to release its allocation)."""
        peers = list(self._peers)
        if not peers:
            return
        closing = [asyncio.ensure_future(p.aclose("server shutting down")) for p in peers]
        _done, pending = await asyncio.wait(closing, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("%d peers did not close within %g s", len(pending), timeout)
