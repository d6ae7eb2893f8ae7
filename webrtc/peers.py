"""Viewer peer connections: offer in, answer out, and a guaranteed end.

The viewer offers (recvonly video, as WHEP does); the server answers with aiortc and every one
of its candidates. A :class:`Peer` owns its RTCPeerConnection and a supervisor task that closes
it when ICE has not connected within the timeout, or when the connection goes ``failed`` or
``closed``. :class:`PeerManager` owns every peer and closes them all on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
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
from aiortc.sdp import SessionDescription, candidate_from_sdp

from . import ice
from .encoders import Codec, EncoderPool, VideoKey
from .errors import NegotiationError
from .frames import CapturedFrame
from .latest import Latest
from .tasks import cancel_and_wait
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


class Peer:
    """One viewer's WebRTC session."""

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
            self._track = EncodedVideoTrack(
                on_stop=lambda encoder: manager.encoders.release(encoder.key, encoder)
            )
        self._transceiver: RTCRtpTransceiver | None = None
        self.codec: Codec | None = None
        self._connected = asyncio.Event()
        self._ended = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self._supervisor: asyncio.Task[None] | None = None
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
            self.close_reason = self.close_reason or f"connection {state}"
            self._ended.set()

    async def answer(self, offer_sdp: str, hints: ViewerHints | None = None) -> Answer:
        """Apply the viewer's offer and make the answer, with every server candidate in it.

        Raises:
            NegotiationError: the offer is not one this server can answer.
        """
        if self._transceiver is not None:
            raise NegotiationError("unexpected", "this session already has an offer")
        hints = hints or ViewerHints()
        try:
            parsed = SessionDescription.parse(offer_sdp)
        except Exception as exc:  # aiortc's parser raises whatever the text provokes
            raise NegotiationError("invalid-sdp", f"the offer does not parse: {exc}") from exc
        if not any(m.kind == "video" for m in parsed.media):
            raise NegotiationError("invalid-sdp", "the offer has no video section")
        preferences = _codec_preferences(
            parsed, self._manager.settings.codecs, prefer_h264=hints.prefer_h264
        )
        if not any(p.mimeType.lower() != "video/rtx" for p in preferences):
            allowed = ", ".join(c.mime_type for c in self._manager.settings.codecs)
            raise NegotiationError("no-codec", f"the offer has none of the codecs {allowed}")
        self._transceiver = self._pc.addTransceiver(self._track, direction="sendonly")
        self._transceiver.setCodecPreferences(preferences)
        try:
            with ice.announce_only(self._manager.settings.ice_addresses):
                await self._pc.setRemoteDescription(
                    RTCSessionDescription(sdp=offer_sdp, type="offer")
                )
                await self._pc.setLocalDescription(await self._pc.createAnswer())
        except Exception as exc:  # aiortc raises ValueError, InvalidStateError, OperationError…
            raise NegotiationError("invalid-sdp", f"the offer was refused: {exc}") from exc
        local = self._pc.localDescription
        self.codec = _negotiated_codec(self._transceiver, local.sdp)
        answer_sdp = ice.advertise(local.sdp, self._manager.settings.advertise_addresses)
        if isinstance(self._track, EncodedVideoTrack):
            max_height = hints.max_height if self.codec is Codec.H264 else 0
            self._track.attach(self._manager.encoders.acquire(VideoKey(self.codec, max_height)))
            # aiortc answers a PLI/FIR by flagging its own (unused) encoder: route it to the
            # shared encoder instead, which rate-limits IDRs for everyone.
            self._transceiver.sender._send_keyframe = self._track.request_keyframe  # type: ignore[method-assign]
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"peercam-peer-{self.viewer_id}"
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

    async def _supervise(self) -> None:
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
        elif not self._connected.is_set():
            self.close_reason = f"not connected within {timeout:g} s"
            logger.info("viewer %s: %s", self.viewer_id, self.close_reason)
        else:
            logger.info("viewer %s: WebRTC connected", self.viewer_id)
            await self._ended.wait()
        # Only start the close: the supervisor may be cancelled by aclose(), and a cancel that
        # reaches RTCPeerConnection.close() midway breaks aiortc's own close.
        self._begin_close()

    async def aclose(self, reason: str = "closed by the server") -> None:
        """Close the peer connection (idempotent) and wait until it is closed."""
        self.close_reason = self.close_reason or reason
        await cancel_and_wait(self._supervisor)
        await asyncio.shield(self._begin_close())

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
            self._track.stop()  # idempotent: releases the shared encoder once
            self._manager._forget(self)
            self.closed.set()
            logger.info("viewer %s: WebRTC closed (%s)", self.viewer_id, self.close_reason)


@dataclass
class PeerManager:
    """Owns every viewer's peer connection."""

    settings: WebRtcSettings
    encoders: EncoderPool
    frames: Latest[CapturedFrame]
    _peers: set[Peer] = field(default_factory=set)

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
