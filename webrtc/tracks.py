"""A viewer's video track: hands the shared encoder's packets to one RTCRtpSender."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .encoders import (
    TIME_BASE,
    VIDEO_CLOCK,
    EncoderClosed,
    FellBehind,
    Packet,
    SharedEncoder,
    i420_picture,
)
from .frames import CapturedFrame
from .latest import Latest, LatestClosed

logger = logging.getLogger(__name__)

#: While a rung switch is pending, a frame of the current rung waits at most this many of the
#: target's frames, each for at most this long (s), for the target to encode as far.
CATCH_UP_FRAMES = 3
CATCH_UP_WAIT = 0.1
#: Seconds between two restarts of one viewer from a pass-through stream's cached GOP.
RESTART_MIN_INTERVAL = 2.0


class EncodedVideoTrack(MediaStreamTrack):
    """Returns already-encoded ``av.Packet``s, so aiortc only packetizes them.

    The codec is known only once the answer is made, so the track is created unbound and
    :meth:`attach` binds it to a shared encoder (a rung of the ladder). A bound track starts at
    the next keyframe, which it asks for, so a late joiner decodes at once. :meth:`switch`
    moves it to another rung at that rung's next IDR: until the IDR arrives the viewer keeps
    getting its current rung, so it sees a change of size, never a broken picture.

    The track holds no lease on the encoders it reads: its owner (the viewer's peer) acquires
    and releases them, and keeps :attr:`encoder` and :attr:`pending` leased.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._encoder: SharedEncoder | None = None
        self._pending: SharedEncoder | None = None
        self._pending_after = 0
        self._attached = asyncio.Event()
        self._after = 0
        self._synced = False
        self._last_pts = -1
        self.frames_sent = 0
        self.keyframes_sent = 0
        self.bytes_sent = 0
        self.resyncs = 0
        self.switches = 0
        #: Set while frames may be sent; cleared by :meth:`hold`.
        self._sending = asyncio.Event()
        self._sending.set()
        #: Called as a pause begins (:meth:`hold`): the viewer's retransmit budget forgets
        #: what was sent before it (webrtc/peers.py).
        self.on_hold: Callable[[], None] | None = None
        #: A position to read from next, for this viewer alone (see :meth:`request_keyframe`).
        self._restart: int | None = None
        self._restarted_at = -math.inf
        self.restarts = 0

    @property
    def encoder(self) -> SharedEncoder | None:
        """The rung this track sends now."""
        return self._encoder

    @property
    def pending(self) -> SharedEncoder | None:
        """The rung this track moves to at its next keyframe, if a switch is under way."""
        return self._pending

    def attach(self, encoder: SharedEncoder) -> None:
        if self._encoder is not None:
            raise RuntimeError("track already attached")
        self._encoder = encoder
        self._after = encoder.newest_seq
        encoder.request_keyframe()
        self._attached.set()

    def switch(self, encoder: SharedEncoder) -> None:
        """Move to ``encoder`` at its next keyframe (asked for now); a later call wins."""
        if self._encoder is None:
            raise RuntimeError("track not attached")
        if encoder is self._encoder:
            self._pending = None
            return
        self._pending = encoder
        self._pending_after = encoder.newest_seq
        encoder.request_keyframe()

    @property
    def held(self) -> bool:
        return not self._sending.is_set()

    def hold(self) -> None:
        """Send nothing from now on, not even the rest of the current frame's rung, until
        :meth:`resume`: the viewer's path holds a long queue of late pictures, to drain."""
        if not self._sending.is_set():
            return
        self._sending.clear()
        if self.on_hold is not None:
            self.on_hold()

    def resume(self) -> None:
        """Send again after :meth:`hold`, from a new IDR of the rung switched to (or of the
        current one): what was encoded during the pause is not sent, or it would be the queue
        again, and nothing more of the rung before either (the switch is made at once: the
        picture is paused already)."""
        if self._sending.is_set():
            return
        if self._pending is not None:
            self._encoder, self._pending = self._pending, None
            self.switches += 1
        if self._encoder is not None:
            self._after = self._encoder.newest_seq
            self._synced = False
            self._encoder.request_keyframe()
        self._sending.set()

    def request_keyframe(self) -> None:
        """Called for this viewer's PLI/FIR (hooked into its RTCRtpSender): an IDR of the rung
        it gets next. A rung that cannot force one (a camera passed through) restarts this
        viewer alone from its cached GOP instead, at most once per ``RESTART_MIN_INTERVAL``
        (a receiver repeats its PLI until it decodes; each restart would begin the replay
        again)."""
        target = self._pending or self._encoder
        if target is None:
            return
        target.request_keyframe()
        now = time.monotonic()
        if self._pending is None and now - self._restarted_at >= RESTART_MIN_INTERVAL:
            position = target.restart_position()
            if position is not None:
                self._restart = position
                self._restarted_at = now
                self.restarts += 1

    def _switch_now(self) -> Packet | None:
        """The target rung's keyframe, if it has one this viewer can continue with."""
        pending = self._pending
        assert pending is not None
        item = pending.keyframe_after(self._pending_after)
        if item is None:
            return None
        packet = item.packet
        pts = int(packet.pts or 0)
        if pts < self._last_pts:
            # Older than what the viewer has already shown (the target rung lags behind): its
            # timestamps would run backwards. Wait for the next one.
            self._pending_after = item.seq
            pending.request_keyframe()
            return None
        if pts == self._last_pts:
            # The same captured frame as the last one sent (both rungs encode every frame):
            # one tick later, so the receiver sees a new frame. A copy: packets are shared.
            packet = av.Packet(bytes(packet))
            packet.pts = packet.dts = pts + 1
            packet.time_base = TIME_BASE
            packet.is_keyframe = True
        self._encoder, self._pending = pending, None
        self._after = item.seq
        self._synced = True
        self.switches += 1
        return packet

    async def recv(self) -> Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self._attached.wait()
        while True:
            if not self._sending.is_set():
                await self._sending.wait()  # held (see hold)
                continue
            encoder = self._encoder
            assert encoder is not None
            packet: Packet | None = None
            if self._restart is not None:
                self._after, self._restart, self._synced = self._restart, None, False
            if self._pending is not None:
                packet = self._switch_now()
            if packet is None:
                try:
                    item = await encoder.next_frame(self._after)
                except FellBehind:
                    # Jump to the present; a keyframe is needed to decode from there.
                    self.resyncs += 1
                    self._after = encoder.newest_seq
                    self._synced = False
                    encoder.request_keyframe()
                    continue
                except EncoderClosed:
                    if self._pending is not None:  # its rung stopped: the next one carries on
                        self._encoder, self._pending = self._pending, None
                        self._after, self._synced = self._pending_after, False
                        continue
                    self.stop()
                    raise MediaStreamError from None
                if self._restart is not None:
                    continue  # a restart came while waiting: read from there instead
                if self._pending is not None and self._synced:
                    # Do not run ahead of the rung being switched to: a slower rung's IDR must
                    # not come out older than what this viewer was already sent.
                    packet = await self._catch_up(self._pending, int(item.packet.pts or 0))
                    if packet is not None:
                        if self._sending.is_set():
                            break
                        continue  # held meanwhile: not sent
                self._after = item.seq
                if not self._synced:
                    if not item.keyframe:
                        continue
                    self._synced = True
                packet = item.packet
            if self._sending.is_set():
                break
            # Held while this frame was awaited: not sent.
        self.frames_sent += 1
        self.bytes_sent += packet.size
        self.keyframes_sent += bool(packet.is_keyframe)
        self._last_pts = int(packet.pts or 0)
        return packet

    async def _catch_up(self, pending: SharedEncoder, pts: int) -> Packet | None:
        """Wait briefly for ``pending`` to encode up to ``pts``; its IDR if that brings one."""
        for _ in range(CATCH_UP_FRAMES):
            newest = pending.newest_frame
            if newest is not None and int(newest.packet.pts or 0) >= pts:
                break
            try:
                async with asyncio.timeout(CATCH_UP_WAIT):
                    await pending.next_frame(pending.newest_seq)
            except (TimeoutError, FellBehind, EncoderClosed):
                break
        return self._switch_now()


class RawVideoTrack(MediaStreamTrack):
    """Returns raw frames, so aiortc encodes them itself, once per viewer.

    Only for comparison (``--encoder per-viewer``): this is how aiortc is usually used, and
    what the shared encoder exists to beat.
    """

    kind = "video"

    def __init__(self, frames: Latest[CapturedFrame]) -> None:
        super().__init__()
        self._frames = frames
        self._after = 0
        self._t0: float | None = None
        self.frames_sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            self._after, frame = await self._frames.next(self._after)
        except LatestClosed:
            self.stop()
            raise MediaStreamError from None
        picture = i420_picture(frame.i420, frame.width, frame.height)
        if self._t0 is None:
            self._t0 = frame.monotonic
        picture.pts = round((frame.monotonic - self._t0) * VIDEO_CLOCK)
        picture.time_base = TIME_BASE
        self.frames_sent += 1
        return picture
