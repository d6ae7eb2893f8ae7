"""Encode once: one shared encoder per codec feeds every viewer of that codec.

aiortc encodes per peer (N viewers = N encoders). Here a :class:`SharedEncoder` takes the newest
frame of a source, encodes it once on its own thread and keeps the last second of encoded frames
in a ring. Each viewer's track (:mod:`webrtc.tracks`) reads that ring in order and hands the
``av.Packet`` to its own ``RTCRtpSender``, which only packetizes and encrypts.

Why a ring and not "latest wins" here: a video stream cannot skip a frame without breaking
decoding until the next keyframe. A reader that falls more than the ring behind (a stalled event
loop) gets :class:`FellBehind`, jumps to the present and waits for a keyframe it asks for. The
ring is bounded, so a slow viewer costs no memory and never slows the encoder or other viewers.
"""

from __future__ import annotations

import asyncio
import enum
import fractions
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import av
import cv2
import numpy as np
from aiortc.codecs.vpx import number_of_threads
from av.codec.context import CodecContext
from av.stream import Stream
from av.video.codeccontext import VideoCodecContext

from .frames import CapturedFrame, i420_planes
from .latest import Latest
from .pool import Pool
from .worker import FrameWorker, timed

logger = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
RING_SECONDS = 1.0
KEYFRAME_MIN_INTERVAL = 0.5  # at most one forced IDR per this many seconds: an IDR goes to all
KEYFRAME_INTERVAL = 5.0  # a periodic keyframe bounds recovery when a keyframe request is lost
SOFTWARE_H264 = "libx264"
#: What ``--video-encoder auto`` tries, in order: hardware first, software last.
H264_ENCODERS = (
    "h264_nvenc", "h264_qsv", "h264_amf", "h264_vaapi", "h264_v4l2m2m", "h264_rkmpp",
    SOFTWARE_H264,
)  # fmt: skip


if TYPE_CHECKING:
    Packet: TypeAlias = av.Packet[Stream]  # generic only in PyAV's stubs
else:
    Packet = av.Packet


class Codec(enum.StrEnum):
    """A video codec peercam can send."""

    VP8 = "vp8"
    H264 = "h264"

    @property
    def mime_type(self) -> str:
        return "video/VP8" if self is Codec.VP8 else "video/H264"

    @classmethod
    def from_mime_type(cls, mime_type: str) -> Codec:
        for codec in cls:
            if codec.mime_type.lower() == mime_type.lower():
                return codec
        raise ValueError(f"unsupported codec {mime_type}")


def default_bitrate(width: int, height: int, fps: float) -> int:
    """A bitrate that keeps a camera picture clean: ~0.1 bit per pixel, 300 kbit/s - 6 Mbit/s."""
    return int(min(6_000_000, max(300_000, width * height * fps * 0.1)))


@dataclass(frozen=True, slots=True)
class VideoKey:
    """What a shared video encoder produces: a codec, at most ``max_height`` lines tall, at
    ``bitrate`` bit/s and ``fps`` frames a second (0 for each: the source's own / the default).

    A rung of the ladder (:mod:`webrtc.ladder`) is one key per codec.
    """

    codec: Codec
    max_height: int = 0  # 0: the source's own size
    bitrate: int = 0  # 0: default_bitrate() of the size
    fps: float = 0.0  # 0: the source's rate

    def __str__(self) -> str:
        text = f"{self.codec}" + (f"/{self.max_height}p" if self.max_height else "")
        if self.bitrate:
            text += f"@{self.bitrate // 1000}k"
        return text + (f"/{self.fps:g}fps" if self.fps else "")


def scaled_size(width: int, height: int, max_height: int) -> tuple[int, int]:
    """The frame size under ``max_height`` lines, aspect kept, both sides even."""
    if not max_height or height <= max_height:
        return width, height
    new_width = round(width * max_height / height)
    return new_width - new_width % 2, max_height - max_height % 2


def i420_picture(
    i420: Any, width: int, height: int, new_width: int = 0, new_height: int = 0
) -> av.VideoFrame:
    """An ``av.VideoFrame`` of a planar I420 picture (``(h*3/2, w)``, as cv2 makes it),
    scaled to ``new_width`` x ``new_height`` plane by plane (0: at its own size).

    At its own size the picture wraps the array (``from_numpy_buffer``, ~5 µs against a
    copy's 50 for 640x480 here; the array is read-only and outlives the frame). Scaled, each
    plane goes straight into the frame's own buffer: one pass over the pixels
    (``from_ndarray`` copies row by row, and scaling into an array first costs another
    copy). Scaling the planes is ~6x cheaper than scaling BGR and converting again. Area
    averaging at exactly half size (OpenCV's fast path there: 18 µs for 320x240 here),
    bilinear elsewhere (area averaging costs 0.2-1.2 ms a plane at any other ratio, whole
    ones included).
    """
    new_width, new_height = new_width or width, new_height or height
    same = (width, height) == (new_width, new_height)
    if same and height % 4 == 0 and i420.flags.c_contiguous:  # (PyAV takes whole rows)
        # At its own size, the frame is the array itself: no copy (the encoders only read
        # it, and copy it into their own buffers as they take it).
        return av.VideoFrame.from_numpy_buffer(i420, format="yuv420p")
    picture = av.VideoFrame(new_width, new_height, "yuv420p")
    sources = i420_planes(i420, width, height)
    chroma = (new_width // 2, new_height // 2)
    half = (width, height) == (2 * new_width, 2 * new_height)
    interpolation = cv2.INTER_AREA if half else cv2.INTER_LINEAR
    for plane, source, (w, h) in zip(
        picture.planes, sources, ((new_width, new_height), chroma, chroma), strict=True
    ):
        rows = memoryview(plane)  # the plane is a buffer (its stub does not say so)
        view = np.ndarray((h, w), np.uint8, buffer=rows, strides=(plane.line_size, 1))
        if same:
            np.copyto(view, source)
        else:
            cv2.resize(source, (w, h), dst=view, interpolation=interpolation)
    return picture


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded picture (one access unit), shared read-only by every viewer."""

    seq: int
    packet: Packet
    keyframe: bool
    capture_time: float
    width: int
    height: int


class FellBehind(Exception):
    """A reader asked for a frame that has already left the ring."""


class EncoderClosed(Exception):
    """The encoder stopped while a reader waited on it."""


class SharedEncoder(FrameWorker["Packet | None"]):
    """Encodes a source's newest frame once per frame for every viewer of one codec."""

    def __init__(
        self, key: VideoKey | Codec, frames: Latest[CapturedFrame], *, fps: float,
        bitrate: int | None = None, epoch: float | None = None,
        h264_encoder: str = SOFTWARE_H264, group: RungGroup | None = None,
    ) -> None:  # fmt: skip
        """``fps`` is the source's rate; ``epoch`` (``time.monotonic()``) the capture-clock
        origin of presentation times, shared by every rung of a ladder so that a viewer moving
        between them sees continuous timestamps; ``h264_encoder`` the FFmpeg encoder H.264
        keys use (:func:`select_h264_encoder`); ``group``: encode in that group's job on its
        thread (:class:`RungGroup`) instead of on a thread of its own."""
        self.key = key if isinstance(key, VideoKey) else VideoKey(key)
        self._group = group
        self.codec = self.key.codec
        self.encoder_name = "libvpx" if self.codec is Codec.VP8 else h264_encoder
        super().__init__(frames, f"encoder-{self.key}")
        self._fps = max(1.0, min(self.key.fps or fps, fps))
        self._bitrate = self.key.bitrate or bitrate
        self._interval = 1.0 / self._fps if self.key.fps and self.key.fps < fps else 0.0
        self._next_due = 0.0
        self._ring: deque[EncodedFrame] = deque(maxlen=max(2, round(self._fps * RING_SECONDS)))
        self._seq = 0
        self._new = asyncio.Event()
        self._size: tuple[int, int] | None = None
        self._context: VideoCodecContext | None = None
        self._frame_count = 0
        self._t0 = epoch
        self._last_pts = -1
        self._keyframe_wanted = False
        self._last_forced = -KEYFRAME_MIN_INTERVAL
        self.frames_encoded = 0
        self.keyframes = 0
        self.forced_keyframes = 0

    #: False for a pass-through stream, which stands in for an encoder but encodes nothing.
    encodes = True

    def start(self) -> None:
        if self._group is not None:
            self._group.join(self)
        else:
            super().start()

    async def aclose(self) -> None:
        if self._group is not None:
            self._stop_in_group()
        else:
            await super().aclose()

    def _stop_in_group(self) -> None:
        """As a member of a group: no more frames, and the readers learn it."""
        self._closed = True
        if self._group is not None:
            self._group.leave(self)
        self._ended()

    # -- the worker's steps ----------------------------------------------------------------

    def _wants(self, frame: CapturedFrame) -> bool:
        if not self._interval:
            return True
        # A lower frame rate than the source's: take frames on a grid of the capture clock,
        # with a little slack so a jittery source does not lose every other due frame.
        if frame.monotonic + 0.25 * self._interval < self._next_due:
            return False
        self._next_due = max(self._next_due + self._interval, frame.monotonic)
        return True

    def _prepare(self, frame: CapturedFrame, seq: int) -> Callable[[], Packet | None]:
        return functools.partial(self._encode, frame, self._take_keyframe_request())

    def _deliver(self, result: Packet | None, frame: CapturedFrame) -> None:
        if result is not None:
            self._publish(result, frame)

    def _ended(self) -> None:
        self._wake()

    # -- keyframes -----------------------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask for an IDR soon: a new viewer, or a viewer's PLI/FIR.

        Requests are merged and rate-limited to one forced IDR per ``KEYFRAME_MIN_INTERVAL``:
        a request inside the window is kept and served when the window ends, never dropped.
        """
        self._keyframe_wanted = True

    def restart_position(self) -> int | None:
        """Where one reader can start again at a keyframe, without asking the encoder for
        one (None: ask with :meth:`request_keyframe`, as an encoder can). A pass-through stream
        cannot force the camera's IDR, but can replay its cached GOP to that reader."""
        return None

    def _take_keyframe_request(self) -> bool:
        now = time.monotonic()
        if self._keyframe_wanted and now - self._last_forced >= KEYFRAME_MIN_INTERVAL:
            self._keyframe_wanted = False
            self._last_forced = now
            self.forced_keyframes += 1
            return True
        return False

    # -- encoding (on the encoder's thread) ---------------------------------------------------

    def _open(
        self, width: int, height: int, *, lean: bool = False, log: bool = True
    ) -> VideoCodecContext:
        """``lean``: a scaled (lower) rung, encoded with faster settings: its viewers are on
        slow links, where frames that come are worth more than their finest detail, and all
        rungs together must cost well under two full-size encoders."""
        fps = max(1, round(self._fps))
        bitrate = self._bitrate or default_bitrate(width, height, self._fps)
        if self.encoder_name not in ("libvpx", SOFTWARE_H264):
            hardware = open_h264_encoder(self.encoder_name, width, height, fps, bitrate)
            logger.info(
                "encoder %s opened (%s): %dx%d@%d, %d kbit/s",
                self.key, self.encoder_name, width, height, fps, bitrate // 1000,
            )  # fmt: skip
            return hardware
        context = CodecContext.create(self.encoder_name, "w")
        assert isinstance(context, VideoCodecContext)
        context.width = width
        context.height = height
        context.pix_fmt = "yuv420p"
        context.time_base = fractions.Fraction(1, fps)
        context.framerate = fractions.Fraction(fps, 1)
        context.bit_rate = bitrate
        context.gop_size = max(1, round(KEYFRAME_INTERVAL * fps))
        # A half-second VBV buffer at the target rate: constant enough for a live stream, and an
        # IDR never takes a link that carries the rate much longer than that to deliver.
        rate = {"maxrate": str(bitrate), "bufsize": str(bitrate // 2)}
        if self.codec is Codec.VP8:
            # As aiortc's own VP8 encoder: realtime, no lookahead, CBR.
            context.qmin = 2
            context.qmax = 56
            context.options = rate | {
                "cpu-used": "-12" if lean else "-6",
                "deadline": "realtime",
                "lag-in-frames": "0",
                # A keyframe at most 3x an average frame: big IDRs are what make pictures
                # late on a slow link (a viewer switching rungs waits for one).
                "max-intra-rate": "300",
                "minrate": str(bitrate),
                "noise-sensitivity": "0" if lean else "4",  # the denoiser costs ~a third
                "overshoot-pct": "15",
                "partitions": "0",
                "static-thresh": "1",
                "undershoot-pct": "100",
            }
            context.thread_count = number_of_threads(width * height, os.cpu_count() or 1)
        else:
            # Constrained baseline (x264's "baseline" has no FMO/ASO), which every browser and
            # iOS decode; zerolatency: no lookahead, no B-frames, one access unit per frame.
            # In-band SPS/PPS (no global header) are repeated before every IDR.
            context.profile = "Baseline"
            level = "31" if width * height <= 1280 * 720 else "40"
            context.options = rate | {
                "preset": "ultrafast" if lean else "superfast",
                **({"threads": "1"} if lean else {}),
                "tune": "zerolatency",
                "level": level,
                "forced-idr": "1",
            }
        context.open()
        (logger.info if log else logger.debug)(
            "encoder %s opened: %dx%d@%d, %d kbit/s",
            self.key,
            width,
            height,
            fps,
            bitrate // 1000,
        )
        return context

    def _encode(self, frame: CapturedFrame, force_keyframe: bool) -> Packet | None:
        width, height = scaled_size(frame.width, frame.height, self.key.max_height)
        context = self._context
        if context is None or context.width != width or context.height != height:
            lean = (width, height) != (frame.width, frame.height)
            context = self._context = self._open(width, height, lean=lean)
            force_keyframe = True
        self._size = (width, height)
        # A lower rung, or 720p for iOS, is scaled once for all its viewers; a rung of half
        # the size or less from the frame's half-size picture, which the rungs share.
        source, source_width, source_height = frame.i420, frame.width, frame.height
        if 2 * width <= source_width and 2 * height <= source_height:
            half = frame.half_i420()
            if half is not None:
                source, source_width, source_height = half, source_width // 2, source_height // 2
        picture = i420_picture(source, source_width, source_height, width, height)
        if context.pix_fmt != "yuv420p":  # a hardware encoder that takes NV12
            picture = picture.reformat(format=context.pix_fmt)
        picture.pts = self._frame_count
        self._frame_count += 1
        picture.pict_type = (
            av.video.frame.PictureType.I if force_keyframe else av.video.frame.PictureType.NONE
        )
        packets = context.encode(picture)
        if not packets:
            return None
        packet = packets[0] if len(packets) == 1 else av.Packet(b"".join(map(bytes, packets)))
        if len(packets) > 1:
            packet.is_keyframe = any(p.is_keyframe for p in packets)
        if packet.is_keyframe and context.extradata and not has_sps(bytes(packet)):
            # A hardware encoder that keeps SPS/PPS in its global header: in front of every
            # IDR, where a viewer that joins or recovers needs them.
            keyframe = av.Packet(bytes(context.extradata) + bytes(packet))
            keyframe.is_keyframe = True
            packet = keyframe
        # Presentation time from the capture clock, so the receiver plays at the real pace.
        if self._t0 is None:
            self._t0 = frame.monotonic
        pts = max(self._last_pts + 1, round((frame.monotonic - self._t0) * VIDEO_CLOCK))
        self._last_pts = pts
        packet.pts = pts
        packet.dts = pts
        packet.time_base = TIME_BASE
        return packet

    # -- readers ------------------------------------------------------------------------

    def _publish(self, packet: Packet, frame: CapturedFrame) -> None:
        self._seq += 1
        keyframe = bool(packet.is_keyframe)
        self._ring.append(
            EncodedFrame(
                seq=self._seq,
                packet=packet,
                keyframe=keyframe,
                capture_time=frame.capture_time,
                width=self._size[0] if self._size else frame.width,
                height=self._size[1] if self._size else frame.height,
            )
        )
        self.frames_encoded += 1
        self.keyframes += keyframe
        self._wake()

    def _wake(self) -> None:
        new, self._new = self._new, asyncio.Event()
        new.set()

    @property
    def newest_seq(self) -> int:
        return self._seq

    @property
    def newest_frame(self) -> EncodedFrame | None:
        return self._ring[-1] if self._ring else None

    async def next_frame(self, after: int) -> EncodedFrame:
        """The encoded frame that follows sequence number ``after``, waiting for it if needed.

        Raises:
            FellBehind: that frame has already left the ring.
            EncoderClosed: the encoder stopped.
        """
        while True:
            if self._closed:
                raise EncoderClosed
            if self._ring and self._ring[-1].seq > after:
                first = self._ring[0].seq
                if after + 1 < first:
                    raise FellBehind
                return self._ring[after + 1 - first]
            await self._new.wait()

    def keyframe_after(self, after: int) -> EncodedFrame | None:
        """The first keyframe in the ring after sequence number ``after``, if there is one."""
        for item in self._ring:
            if item.seq > after and item.keyframe:
                return item
        return None

    @property
    def size(self) -> tuple[int, int] | None:
        """The encoded picture size, once the first frame is encoded."""
        return self._size

    @property
    def bitrate(self) -> int:
        """The target bitrate (the default for the size until the first frame)."""
        if self._bitrate:
            return self._bitrate
        width, height = self._size or (640, 480)
        return default_bitrate(width, height, self._fps)

    def stats(self) -> dict[str, int | str | bool | float]:
        return {
            "codec": str(self.codec),
            "maxHeight": self.key.max_height,
            "bitrate": self.bitrate,
            "fps": self._fps,
            "size": f"{self._size[0]}x{self._size[1]}" if self._size else "",
            "running": not self._closed,
            "encoder": self.encoder_name,
            "framesEncoded": self.frames_encoded,
            "keyframes": self.keyframes,
            "forcedKeyframes": self.forced_keyframes,
        }


#: A group's job for one frame: each member, its packet and how long it took (None: it raised).
GroupResult: TypeAlias = "list[tuple[SharedEncoder, Packet | None, float | None]]"


class RungGroup(FrameWorker[GroupResult]):
    """The lower rungs of one codec, encoded one after another in one job per frame, on one
    thread.

    Each rung on a thread of its own costs a thread hand-off and a turn of the event loop per
    frame, and four encoders taking turns on a core evict each other's caches: with H.264 that
    overhead was as large as the small rungs' encoding itself. In one job, the half-size
    picture they all scale from is made and used while it is in the cache. Only small rungs
    of software encoders are grouped (see :func:`make_encoder_pool`): they take a millisecond
    or two each, so none waits long for the others, and a hardware encoder's wait on its
    device would hold the others up instead of costing CPU.

    Members join when they start and leave when they stop; the group's task waits, costing
    nothing, while it has none. A member whose encoding raises is stopped alone (its readers
    learn it, the pool starts it again for its next user); the others go on.
    """

    def __init__(self, frames: Latest[CapturedFrame], name: str) -> None:
        super().__init__(frames, name)
        self._members: list[SharedEncoder] = []
        self._present = asyncio.Event()
        self._due: list[SharedEncoder] = []

    def join(self, member: SharedEncoder) -> None:
        """On the loop: encode ``member`` from the next frame on."""
        self._members.append(member)
        self._present.set()
        if self._task is None:
            self.start()

    def leave(self, member: SharedEncoder) -> None:
        """On the loop: no more frames for ``member`` (a job under way finishes, unused)."""
        if member in self._members:
            self._members.remove(member)
        if not self._members:
            self._present.clear()

    @property
    def members(self) -> tuple[SharedEncoder, ...]:
        return tuple(self._members)

    async def _ready(self) -> None:
        await self._present.wait()

    def _wants(self, frame: CapturedFrame) -> bool:
        self._due = [m for m in self._members if m._wants(frame)]
        return bool(self._due)

    def _prepare(self, frame: CapturedFrame, seq: int) -> Callable[[], GroupResult]:
        jobs = [(m, m._take_keyframe_request()) for m in self._due]
        return functools.partial(self._encode_all, frame, jobs)

    def _encode_all(
        self, frame: CapturedFrame, jobs: list[tuple[SharedEncoder, bool]]
    ) -> GroupResult:
        """On the group's thread: each member's frame, and how long it took."""
        done: GroupResult = []
        for member, keyframe in jobs:
            try:
                packet, took = timed(functools.partial(member._encode, frame, keyframe))
            except Exception:
                logger.exception("encoder %s failed", member.key)
                done.append((member, None, None))
            else:
                done.append((member, packet, took))
        return done

    def _deliver(self, result: GroupResult, frame: CapturedFrame) -> None:
        for member, packet, took in result:
            if member.closed:
                continue  # it left while the job ran
            if took is None:  # its encoding raised: it stops, the others go on
                member._stop_in_group()
                continue
            member.step_seconds.observe(took)
            if packet is not None:
                member._publish(packet, frame)

    def _ended(self) -> None:
        # The group stopped (the pool closed, or a failure of its own): so do its members.
        for member in self.members:
            member._stop_in_group()


class EncodedFeed(Protocol):
    """Already-encoded H.264 of a source (a camera passed through, :mod:`webrtc.passthrough`)
    that can stand in for a shared encoder."""

    @property
    def epoch(self) -> float:
        """The ``time.monotonic()`` origin of its presentation times."""

    def serves(self, key: VideoKey) -> bool:
        """Whether it can feed ``key``'s viewers now (H.264, full size and rate)."""

    def open_stream(self, key: VideoKey) -> SharedEncoder:
        """A reader of the feed with a shared encoder's interface, for the pool."""


class EncoderPool(Pool[VideoKey, SharedEncoder]):
    """Shared video encoders of one source, and its pass-through stream where there is one.

    ``started`` counts encoders only (a pass-through stream encodes nothing);
    ``passthrough_started`` counts the pass-through streams.
    """

    def __init__(
        self, factory: Callable[[VideoKey], SharedEncoder], feed: EncodedFeed | None = None,
        groups: dict[Codec, RungGroup] | None = None,
    ) -> None:  # fmt: skip
        """``groups``: the rung groups the factory's encoders join; the pool stops them."""
        super().__init__(factory, "shared video encoder")
        self.feed = feed
        self.groups = groups if groups is not None else {}
        self.passthrough_started = 0

    async def aclose(self) -> None:
        await super().aclose()
        groups = list(self.groups.values())
        self.groups.clear()
        await asyncio.gather(*(g.aclose() for g in groups))

    @property
    def preferred_codec(self) -> Codec | None:
        """H.264 while the source passes through: whoever offers it costs no encode."""
        return (
            Codec.H264 if self.feed is not None and self.feed.serves(VideoKey(Codec.H264)) else None
        )

    def acquire(self, key: VideoKey) -> SharedEncoder:
        before = self.started[key]
        worker = super().acquire(key)
        if self.started[key] != before and not worker.encodes:
            self.started[key] -= 1
            self.passthrough_started += 1
        return worker


def make_encoder_pool(
    frames: Latest[CapturedFrame], *, fps: float, bitrate: int | None,
    h264_encoder: str = SOFTWARE_H264, feed: EncodedFeed | None = None,
) -> EncoderPool:  # fmt: skip
    """Shared video encoders of one source: one per codec and rung, while it has viewers.

    Every encoder of the pool stamps times from one epoch (the pool's creation, or the feed's),
    so a viewer can move between rungs without a break in its timestamps. With a ``feed``, the
    keys it serves get its stream instead of an encoder. A software encoder of at most half
    the source's height joins its codec's :class:`RungGroup`; the top rung, a device's 720p
    cap on a larger source and hardware encoders run on threads of their own.
    """
    epoch = feed.epoch if feed is not None else time.monotonic()
    groups: dict[Codec, RungGroup] = {}

    def group_for(key: VideoKey) -> RungGroup | None:
        software = key.codec is Codec.VP8 or h264_encoder == SOFTWARE_H264
        newest = frames.get()
        if not software or not key.max_height or newest is None:
            return None
        if 2 * key.max_height > newest[1].height:
            return None
        group = groups.get(key.codec)
        if group is None or group.closed:
            group = groups[key.codec] = RungGroup(frames, f"rungs-{key.codec}")
        return group

    def factory(key: VideoKey) -> SharedEncoder:
        if feed is not None and feed.serves(key):
            return feed.open_stream(key)
        return SharedEncoder(
            key, frames, fps=fps, bitrate=bitrate, epoch=epoch, h264_encoder=h264_encoder,
            group=group_for(key),
        )  # fmt: skip

    return EncoderPool(factory, feed, groups)


# -- choosing the H.264 encoder (--video-encoder) ------------------------------------------------

#: Options per hardware encoder: no B-frames, low latency, (constrained) baseline.
_HW_OPTIONS: dict[str, dict[str, str]] = {
    "h264_nvenc": {
        "preset": "p2",
        "tune": "ll",
        "zerolatency": "1",
        "forced-idr": "1",
        "profile": "baseline",
    },
    "h264_qsv": {"preset": "veryfast", "profile": "baseline", "look_ahead": "0"},
    "h264_amf": {"usage": "ultralowlatency", "profile": "constrained_baseline"},
    "h264_vaapi": {"profile": "constrained_baseline"},
    "h264_v4l2m2m": {},
    "h264_rkmpp": {"profile": "baseline"},
}


def has_sps(data: bytes) -> bool:
    """Whether an Annex-B access unit carries an H.264 sequence parameter set (NAL type 7)."""
    start = data.find(b"\x00\x00\x01")
    while 0 <= start < len(data) - 3:
        if data[start + 3] & 0x1F == 7:
            return True
        start = data.find(b"\x00\x00\x01", start + 3)
    return False


def open_h264_encoder(
    name: str, width: int, height: int, fps: int, bitrate: int
) -> VideoCodecContext:
    """Open FFmpeg's encoder ``name`` for peercam's stream: no B-frames, a fixed GOP of
    ``KEYFRAME_INTERVAL``, baseline profile where the encoder takes one, in-band SPS/PPS.

    Raises:
        av.FFmpegError, ValueError: the encoder does not open here (no device, no driver).
    """
    context = CodecContext.create(name, "w")
    if not isinstance(context, VideoCodecContext):
        raise ValueError(f"{name} is not a video encoder")
    context.width = width
    context.height = height
    context.pix_fmt = "nv12" if name in ("h264_qsv", "h264_vaapi") else "yuv420p"
    context.time_base = fractions.Fraction(1, fps)
    context.framerate = fractions.Fraction(fps, 1)
    context.bit_rate = bitrate
    context.gop_size = max(1, round(KEYFRAME_INTERVAL * fps))
    context.max_b_frames = 0
    context.options = {"bf": "0", "g": str(context.gop_size)} | _HW_OPTIONS.get(name, {})
    context.open()
    return context


def trial_encode(name: str, width: int = 320, height: int = 240, fps: int = 30) -> str | None:
    """Encode one second of pictures with ``name``; None if it works, else why not.

    Blocking (it may wait on a device): call at start or off the event loop.
    """
    try:
        if name == SOFTWARE_H264:
            encoder = SharedEncoder(Codec.H264, Latest(), fps=fps)
            context = encoder._open(width, height, log=False)
        else:
            context = open_h264_encoder(name, width, height, fps, 500_000)
        packets = 0
        for i in range(fps):
            picture = av.VideoFrame(width, height, "yuv420p")
            for plane in picture.planes:
                plane.update(bytes([(i * 8) % 256]) * plane.buffer_size)
            if context.pix_fmt != "yuv420p":
                picture = picture.reformat(format=context.pix_fmt)
            picture.pts = i
            packets += len(context.encode(picture))
        packets += len(context.encode(None))
    except (av.FFmpegError, ValueError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None if packets else "it produced no packets"


def select_h264_encoder(requested: str) -> str:
    """The H.264 encoder for ``--video-encoder``: ``auto`` tries each of ``H264_ENCODERS`` this
    PyAV build has with a one-second test encode and takes the first that works (libx264 last);
    a name given is checked the same way.

    Blocking (test encodes): call at start, before the event loop runs.

    Raises:
        ValueError: the named encoder is unknown, not H.264, or does not work here.
    """
    available = av.codecs_available
    if requested != "auto":
        if requested not in available:
            raise ValueError(
                f"--video-encoder {requested}: this PyAV build has no such encoder "
                f"(H.264 encoders here: {', '.join(n for n in H264_ENCODERS if n in available)})"
            )
        try:
            codec = av.Codec(requested, "w")
        except (av.FFmpegError, ValueError):
            raise ValueError(f"--video-encoder {requested}: not an encoder") from None
        if codec.id != av.Codec("h264", "r").id:
            raise ValueError(f"--video-encoder {requested}: not an H.264 encoder")
        requested = codec.name  # "h264" names FFmpeg's default H.264 encoder
        failure = trial_encode(requested)
        if failure is not None:
            raise ValueError(f"--video-encoder {requested} does not work here: {failure}")
        logger.info("video encoder %s (as asked)", requested)
        return requested
    tried: list[str] = []
    for name in H264_ENCODERS:
        if name not in available:
            continue
        failure = trial_encode(name)
        if failure is None:
            if tried:
                logger.info(
                    "video encoder %s (%s)", name,
                    "software: no hardware encoder works here, tried " + ", ".join(tried)
                    if name == SOFTWARE_H264 else "hardware",
                )  # fmt: skip
            else:
                logger.info("video encoder %s", name)
            return name
        logger.debug("video encoder %s does not work: %s", name, failure)
        tried.append(name)
    raise ValueError("no H.264 encoder works here (tried " + ", ".join(tried) + ")")
