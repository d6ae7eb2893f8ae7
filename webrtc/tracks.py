"""A viewer's video track: hands the shared encoder's packets to one RTCRtpSender."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .encoders import TIME_BASE, VIDEO_CLOCK, EncoderClosed, FellBehind, Packet, SharedEncoder
from .frames import CapturedFrame
from .latest import Latest, LatestClosed

logger = logging.getLogger(__name__)


class EncodedVideoTrack(MediaStreamTrack):
    """Returns already-encoded ``av.Packet``s, so aiortc only packetizes them.

    The codec is known only once the answer is made, so the track is created unbound and
    :meth:`attach` binds it to the shared encoder of the negotiated codec. A bound track starts
    at the next keyframe, which it asks for, so a late joiner decodes at once.
    """

    kind = "video"

    def __init__(self, on_stop: Callable[[SharedEncoder], None] | None = None) -> None:
        super().__init__()
        self._encoder: SharedEncoder | None = None
        self._attached = asyncio.Event()
        self._on_stop = on_stop
        self._after = 0
        self._synced = False
        self.frames_sent = 0
        self.resyncs = 0

    def attach(self, encoder: SharedEncoder) -> None:
        if self._encoder is not None:
            raise RuntimeError("track already attached")
        self._encoder = encoder
        self._after = encoder.newest_seq
        encoder.request_keyframe()
        self._attached.set()

    def request_keyframe(self) -> None:
        """Called for this viewer's PLI/FIR (hooked into its RTCRtpSender)."""
        if self._encoder is not None:
            self._encoder.request_keyframe()

    async def recv(self) -> Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self._attached.wait()
        encoder = self._encoder
        assert encoder is not None
        while True:
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
                self.stop()
                raise MediaStreamError from None
            self._after = item.seq
            if not self._synced:
                if not item.keyframe:
                    continue
                self._synced = True
            self.frames_sent += 1
            return item.packet

    def stop(self) -> None:
        if self.readyState == "live" and self._encoder is not None and self._on_stop:
            self._on_stop(self._encoder)
        super().stop()


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
        picture = av.VideoFrame.from_ndarray(frame.i420, format="yuv420p")
        if self._t0 is None:
            self._t0 = frame.monotonic
        picture.pts = round((frame.monotonic - self._t0) * VIDEO_CLOCK)
        picture.time_base = TIME_BASE
        self.frames_sent += 1
        return picture
