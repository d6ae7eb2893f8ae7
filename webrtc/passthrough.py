"""H.264 pass-through: a camera's own packets to every WebRTC viewer, with instant start.

An ``rtsp://`` camera (or a V4L2 camera asked for H.264) is read with PyAV's demuxer; its H.264
is not decoded. :class:`StreamSource` puts each access unit, in Annex-B with SPS/PPS before every
IDR, into a :class:`PacketFeed`, which keeps the current GOP (from the last IDR; bounded in time
and bytes) and stands in for the pool's top H.264 rung: :class:`PassthroughStream` has a
:class:`~webrtc.encoders.SharedEncoder`'s reader interface, so a viewer's track reads it as it
reads an encoder. The camera is read with or without viewers, so the cache is always warm.

**Instant start.** A reader that joins (or falls out of the ring) is first given the cached GOP
from its IDR, *replayed*: paced at ``REPLAY_SPEED`` times real time with timestamps compressed
to that pace, so its decoder catches up in well under a second and its renderer skips the old
pictures; then it continues with the live packets. (A whole GOP at once would overflow a
receive buffer; a GOP at its own timestamps would leave the viewer a GOP behind for good.) The
replay needs no state per viewer here: the reader's position (``after``) carries it — a negative
sequence number encodes the join time, the IDR and the next frame (see :func:`_token`).

**Keyframe requests** cannot force the camera's IDR. A viewer's PLI is counted and otherwise
waits for the camera's next IDR: the camera's GOP bounds recovery (a page whose picture stalls
renegotiates after 2 s and then starts from the cache). Switching up to this rung from a
transcoded one also waits for the camera's IDR.

**When not to pass through** — the source decodes and peercam encodes instead, with one log
line saying why: ``--passthrough off``, a codec other than H.264 (H.265), B-frames (the stream
says so, or presentation times go backwards), a profile browsers do not decode.

**Pictures on demand.** JPEG, MJPEG, snapshots and transcoded rungs (lower rungs, VP8) need
decoded frames: the source decodes only while someone reads :attr:`StreamSource.frames`
(:class:`DemandFrames`), starting from the cached GOP, so a camera watched over WebRTC alone
costs no decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Literal

import av
import numpy as np
from av.bitstream import BitStreamFilterContext
from av.codec.context import CodecContext
from av.video.codeccontext import VideoCodecContext

from .encoders import (
    TIME_BASE,
    VIDEO_CLOCK,
    Codec,
    EncodedFrame,
    EncoderClosed,
    FellBehind,
    Packet,
    SharedEncoder,
    VideoKey,
    default_bitrate,
    i420_picture,
)
from .errors import SourceError
from .frames import CapturedFrame
from .latest import Latest
from .sources import NO_SIGNAL_PERIOD, RETRY_MAX, RETRY_MIN, Source, SourceKind, no_signal_picture

logger = logging.getLogger(__name__)

#: The GOP cache's bounds: a longer or bigger GOP is not cached whole (no instant start then).
GOP_MAX_SECONDS = 10.0
GOP_MAX_BYTES = 16 * 1024 * 1024
#: At least this much of the newest stream is kept whatever the GOP, for readers a little behind.
RING_SECONDS = 1.0
#: How much faster than real time the cached GOP is replayed to a new reader.
REPLAY_SPEED = 6.0
#: Decoding goes on this long after the last read of the pictures.
DEMAND_HOLD = 2.0
OPEN_TIMEOUT = 5.0
READ_TIMEOUT = 5.0
#: Profiles (FFmpeg's names) whose streams without B-frames browsers decode.
PROFILES = ("Constrained Baseline", "Baseline", "Main", "High")

_START = b"\x00\x00\x00\x01"
_NAL_IDR, _NAL_SPS, _NAL_PPS = 5, 7, 8
_MASK = (1 << 40) - 1


def nal_units(data: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex-B access unit, without their start codes."""
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        end = data.find(b"\x00\x00\x01", begin)
        nal = data[begin:] if end < 0 else data[begin:end]
        if end >= 0 and nal.endswith(b"\x00"):
            nal = nal[:-1]  # the leading zero of a 4-byte start code
        if nal:
            yield nal
        start = end


def _token(join: int, first: int, after: int) -> int:
    """A replaying reader's position: it joined at presentation time ``join`` (90 kHz ticks
    since the feed's epoch), its replay starts at the IDR with sequence number ``first``, and it
    has been given frames up to ``after``. Negative, so it never looks like a live position."""
    return -((join << 80) | (first << 40) | (after & _MASK)) - 1


def _untoken(token: int) -> tuple[int, int, int]:
    value = -(token + 1)
    return value >> 80, (value >> 40) & _MASK, value & _MASK


class DemandFrames(Latest[CapturedFrame]):
    """Decoded pictures of a passed-through source: reading them is what makes it decode.

    While the source is not decoding, the newest value is old (kept for its size), so a reader
    then waits for a fresh picture instead of getting a stale one.
    """

    def __init__(self) -> None:
        super().__init__()
        self._readers = 0
        self._read_at = time.monotonic()  # a fresh source decodes its first pictures
        self.decoding = False

    @property
    def wanted(self) -> bool:
        return self._readers > 0 or time.monotonic() - self._read_at < DEMAND_HOLD

    async def next(self, after: int = 0) -> tuple[int, CapturedFrame]:
        if not self.decoding:
            after = max(after, self.seq)
        self._readers += 1
        self._read_at = time.monotonic()
        try:
            return await super().next(after)
        finally:
            self._readers -= 1
            self._read_at = time.monotonic()


class PacketFeed:
    """The camera's access units, as the source thread reads them, and the GOP cache.

    Written by the source's thread, read by :class:`PassthroughStream`s on the event loop,
    under one lock held for microseconds. Implements :class:`webrtc.encoders.EncodedFeed`.
    """

    def __init__(self, fps: float, *, cache: bool = True) -> None:
        """``cache`` False: no instant start (new readers wait for the camera's next IDR), only
        to measure what the cache gives."""
        self._epoch = time.monotonic()
        self.fps = fps
        self.cache = cache
        self._lock = threading.Lock()
        self._ring: deque[EncodedFrame] = deque()
        self._bytes = 0
        self._seq = 0
        self._gop = 0  # sequence number of the newest IDR (0: none yet)
        self._last_pts = -1
        self._readers: set[PassthroughStream] = set()
        self.active = True
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.keyframes = 0

    # -- EncodedFeed ------------------------------------------------------------------------

    @property
    def epoch(self) -> float:
        return self._epoch

    def serves(self, key: VideoKey) -> bool:
        if not self.active or key.codec is not Codec.H264:
            return False
        height = self.size[1] if self.size else 0
        full_size = not key.max_height or not height or key.max_height >= height
        return full_size and (not key.fps or key.fps >= self.fps - 0.5)

    def open_stream(self, key: VideoKey) -> SharedEncoder:
        return PassthroughStream(key, self)

    # -- the source's side ------------------------------------------------------------------

    def publish(self, data: bytes, keyframe: bool, arrival: float, wall: float) -> None:
        """Add one access unit (any thread), stamped with its arrival on the feed's clock."""
        packet = av.Packet(data)
        pts = max(self._last_pts + 1, round((arrival - self._epoch) * VIDEO_CLOCK))
        self._last_pts = pts
        packet.pts = packet.dts = pts
        packet.time_base = TIME_BASE
        packet.is_keyframe = keyframe
        width, height = self.size or (0, 0)
        with self._lock:
            self._seq += 1
            self._ring.append(EncodedFrame(self._seq, packet, keyframe, wall, width, height))
            self._bytes += len(data)
            if keyframe:
                self._gop = self._seq
            self._trim()
            readers = list(self._readers)
        self.frames += 1
        self.keyframes += keyframe
        for reader in readers:
            reader.notify()

    def _trim(self) -> None:
        keep = max(2, round(self.fps * RING_SECONDS))
        ring = self._ring
        while len(ring) > keep:
            span = (int(ring[-1].packet.pts or 0) - int(ring[0].packet.pts or 0)) / VIDEO_CLOCK
            if (
                ring[0].seq >= self._gop
                and span <= GOP_MAX_SECONDS
                and self._bytes <= GOP_MAX_BYTES
            ):
                break
            self._bytes -= ring.popleft().packet.size

    def cached_gop(self) -> list[bytes]:
        """The access units from the newest IDR on (empty if it is not cached)."""
        with self._lock:
            if not self._ring or self._gop < self._ring[0].seq:
                return []
            return [bytes(f.packet) for f in self._ring if f.seq >= self._gop]

    def deactivate(self) -> None:
        """Stop passing through: every reader ends (its viewer's track with it)."""
        with self._lock:
            self.active = False
            readers = list(self._readers)
        for reader in readers:
            reader.notify(close=True)

    def gop_seconds(self) -> float:
        """How far the cached GOP reaches back (0: none cached)."""
        with self._lock:
            if not self._ring or self._gop < self._ring[0].seq:
                return 0.0
            first = self._ring[self._gop - self._ring[0].seq]
            return (int(self._ring[-1].packet.pts or 0) - int(first.packet.pts or 0)) / VIDEO_CLOCK

    def status(self) -> dict[str, object]:
        with self._lock:
            cached = bool(self._ring) and self._gop >= self._ring[0].seq
            gop = [f for f in self._ring if f.seq >= self._gop] if cached else []
        span = (
            (int(gop[-1].packet.pts or 0) - int(gop[0].packet.pts or 0)) / VIDEO_CLOCK if gop else 0
        )
        return {
            "gopCachedFrames": len(gop),
            "gopCachedSeconds": round(span, 2),
            "gopCachedBytes": sum(f.packet.size for f in gop),
            "framesIn": self.frames,
            "keyframesIn": self.keyframes,
        }

    # -- the readers' side (on the event loop) -----------------------------------------------

    def attach(self, reader: PassthroughStream) -> None:
        with self._lock:
            self._readers.add(reader)

    def detach(self, reader: PassthroughStream) -> None:
        with self._lock:
            self._readers.discard(reader)

    def newest(self) -> tuple[EncodedFrame | None, int]:
        """The newest frame, and the newest IDR's sequence number if it is cached (else 0)."""
        with self._lock:
            if not self._ring:
                return None, 0
            gop = self._gop if self._gop >= self._ring[0].seq else 0
            return self._ring[-1], gop

    def frame(self, seq: int) -> EncodedFrame | None:
        """Frame ``seq``; None if it has not arrived yet.

        Raises:
            FellBehind: it has already left the ring.
        """
        with self._lock:
            if not self._ring or seq > self._ring[-1].seq:
                return None
            first = self._ring[0].seq
            if seq < first:
                raise FellBehind
            return self._ring[seq - first]

    def keyframe_after(self, after: int) -> EncodedFrame | None:
        with self._lock:
            for item in self._ring:
                if item.seq > after and item.keyframe:
                    return item
        return None

    def bitrate(self) -> int:
        """The camera's bitrate over the ring (0 before a second of it)."""
        with self._lock:
            if len(self._ring) < 2:
                return 0
            span = int(self._ring[-1].packet.pts or 0) - int(self._ring[0].packet.pts or 0)
            size = self._bytes
        return round(size * 8 * VIDEO_CLOCK / span) if span else 0


class PassthroughStream(SharedEncoder):
    """A reader of a :class:`PacketFeed` with a shared encoder's interface, for the pool.

    It encodes nothing (``encodes`` is False): its frames are the camera's. A reader whose
    position is a replay token (see :attr:`newest_seq`) first gets the cached GOP, replayed.
    """

    encodes = False

    def __init__(self, key: VideoKey, feed: PacketFeed) -> None:
        super().__init__(key, Latest(), fps=feed.fps)
        self.encoder_name = "passthrough"
        self._feed = feed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._step = max(1, round(VIDEO_CLOCK / (feed.fps * REPLAY_SPEED)))
        self.replays = 0
        self.frames_replayed = 0
        self.keyframe_requests = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._feed.attach(self)
        if not self._feed.active:
            self._closed = True

    async def aclose(self) -> None:
        self._closed = True
        self._feed.detach(self)
        self._wake()
        self._executor.shutdown(wait=False)

    def notify(self, *, close: bool = False) -> None:
        """New frames (or the end, ``close``); safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody to wake
            loop.call_soon_threadsafe(self._end if close else self._wake)

    def _end(self) -> None:
        self._closed = True
        self._feed.detach(self)
        self._wake()

    def request_keyframe(self) -> None:
        """Nothing to force: the camera sends its IDRs on its own schedule (see the module)."""
        self.keyframe_requests += 1

    def restart_position(self) -> int | None:
        """A replay token from the cached IDR (None without a cache): a viewer's PLI is
        answered from the cache, since the camera's IDR cannot be forced."""
        position = self.newest_seq
        return position if position < 0 else None

    @property
    def newest_seq(self) -> int:
        """Where a new reader starts: a replay token from the cached IDR when there is one,
        else the live position (it then waits for the camera's next IDR)."""
        newest, gop = self._feed.newest()
        if newest is None:
            return 0
        if not gop or not self._feed.cache:
            return newest.seq
        join = round((time.monotonic() - self._feed.epoch) * VIDEO_CLOCK)
        return _token(join, gop, gop - 1)

    @property
    def newest_frame(self) -> EncodedFrame | None:
        return self._feed.newest()[0]

    async def next_frame(self, after: int) -> EncodedFrame:
        while True:
            if self._closed:
                raise EncoderClosed
            new = self._new
            if after >= 0:
                item = self._feed.frame(after + 1)
                if item is not None:
                    return item
            else:
                join, first, given = _untoken(after)
                seq = given + 1
                item = self._feed.frame(seq)
                if item is None:  # the replay has caught up: live from here
                    after = given
                    continue
                pts = join + (seq - first) * self._step
                if int(item.packet.pts or 0) > pts:
                    return item  # live already: its own timestamp is the later one
                delay = self._feed.epoch + pts / VIDEO_CLOCK - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the replay's pace
                    continue
                return self._replayed(item, pts, _token(join, first, seq))
            await new.wait()

    def _replayed(self, item: EncodedFrame, pts: int, seq: int) -> EncodedFrame:
        """A copy of a cached frame, stamped for this reader's replay (packets are shared)."""
        packet = av.Packet(bytes(item.packet))
        packet.pts = packet.dts = pts
        packet.time_base = TIME_BASE
        packet.is_keyframe = item.keyframe
        self.frames_replayed += 1
        self.replays += item.keyframe
        return EncodedFrame(seq, packet, item.keyframe, item.capture_time, item.width, item.height)

    def keyframe_after(self, after: int) -> EncodedFrame | None:
        """The camera's first IDR after ``after`` (for a replay token: after its cached IDR)."""
        if after < 0:
            after = _untoken(after)[1]
        return self._feed.keyframe_after(after)

    @property
    def size(self) -> tuple[int, int] | None:
        return self._feed.size

    @property
    def bitrate(self) -> int:
        measured = self._feed.bitrate()
        if measured:
            return measured
        width, height = self._feed.size or (640, 480)
        return default_bitrate(width, height, self._feed.fps)

    def stats(self) -> dict[str, int | str | bool | float]:
        size = self._feed.size
        return {
            "codec": str(self.codec),
            "maxHeight": self.key.max_height,
            "bitrate": self.bitrate,
            "fps": self._feed.fps,
            "size": f"{size[0]}x{size[1]}" if size else "",
            "running": not self._closed,
            "encoder": "passthrough",
            "framesEncoded": 0,
            "keyframes": self._feed.keyframes,
            "forcedKeyframes": 0,
            "replays": self.replays,
            "framesReplayed": self.frames_replayed,
            "keyframeRequests": self.keyframe_requests,
        }


def _no_signal_encoder(width: int, height: int) -> VideoCodecContext:
    """Every "no signal" picture an IDR (5 a second, simple pictures: small)."""
    context = CodecContext.create("libx264", "w")
    assert isinstance(context, VideoCodecContext)
    context.width, context.height = width, height
    context.pix_fmt = "yuv420p"
    context.time_base = fractions.Fraction(1, 5)
    context.gop_size = 1
    context.bit_rate = 300_000
    context.profile = "Baseline"
    context.options = {"preset": "ultrafast", "tune": "zerolatency", "threads": "1"}
    context.open()
    return context


class StreamSource(Source):
    """A camera read with PyAV's demuxer: passed through where it can be, decoded otherwise.

    ``rtsp://`` URLs (over TCP) and V4L2 cameras with ``input_format="h264"``. When the stream
    fails, viewers stay connected and see "no signal" (encoded here for pass-through viewers,
    every picture an IDR) while it is reopened with backoff.
    """

    def __init__(
        self, kind: Literal["camera", "url"], target: str | int, *, passthrough: bool = True,
        input_format: str | None = None, width: int | None = None, height: int | None = None,
        fps: float | None = None, gop_cache: bool = True,
    ) -> None:  # fmt: skip
        self.kind: SourceKind = kind
        self.target = target
        self._want = (width, height, fps)
        self._input_format = input_format
        self._passthrough_wanted = passthrough
        self._opened: tuple[Any, Any] | None = None
        self._lost_at: float | None = None
        self._fallback: str | None = None  # why not pass through, found while reading
        name = f"camera {target}" if kind == "camera" else f"{kind} {target}"
        super().__init__(name, fps or 30.0)
        self.frames: DemandFrames = DemandFrames()
        self.feed = PacketFeed(self.fps, cache=gop_cache)
        self.codec_name = ""
        self.profile = ""
        self.reason: str | None = None  # why it does not pass through (None: it does)
        self._decoder: VideoCodecContext | None = None
        self._size = (width or 640, height or 480)
        self.frames_decoded = 0

    @property
    def passes_through(self) -> bool:
        return self.reason is None and self.feed.active

    # -- opening ----------------------------------------------------------------------------

    def open(self) -> None:
        """Open now, so a bad source fails at start with a clear error.

        Raises:
            SourceError: it cannot be opened or has no video.
        """
        if self._opened is None:
            self._opened = self._open_container()

    def _open_container(self) -> tuple[Any, Any]:
        target = self.target
        options: dict[str, str] = {}
        fmt: str | None = None
        if self.kind == "camera":
            fmt = "v4l2"
            target = target if isinstance(target, str) else f"/dev/video{target}"
            width, height, fps = self._want
            options = {
                "input_format": self._input_format or "h264",
                "video_size": f"{width or 1280}x{height or 720}",
                "framerate": f"{fps or 30:g}",
            }
        elif str(target).lower().startswith(("rtsp://", "rtsps://")):
            options = {"rtsp_transport": "tcp", "analyzeduration": "500000"}
        try:
            container = av.open(
                str(target), format=fmt, options=options, timeout=(OPEN_TIMEOUT, READ_TIMEOUT)
            )
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open {self.description}: {exc}") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.description} has no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        if rate and 0 < float(rate) <= 240 and not self._want[2]:
            self.fps = self.feed.fps = round(float(rate), 3)
        if context.width and context.height:
            self._size = (context.width, context.height)
            self.feed.size = self._size
        self.codec_name = context.name
        self.profile = context.profile or ""
        reason = self._fallback or self._refusal(context)
        if reason != self.reason:
            if reason is None:
                logger.info(
                    "%s: passing H.264 (%s) through, no decode", self.description, self.profile
                )
            else:
                logger.info("%s: decoding and encoding: %s", self.description, reason)
            self.reason = reason
        if reason is not None and self.feed.active:
            self.feed.deactivate()
        return container, stream

    def _refusal(self, context: Any) -> str | None:
        """Why this stream cannot be passed through; None if it can."""
        if not self._passthrough_wanted:
            return "--passthrough off"
        if context.name != "h264":
            return f"codec {context.name}: WebRTC viewers get H.264 or VP8"
        if context.has_b_frames:
            return "B-frames: WebRTC receivers expect none"
        if context.profile and context.profile not in PROFILES:
            return f"profile {context.profile}: browsers do not decode it"
        return None

    # -- reading ------------------------------------------------------------------------------

    def _run(self) -> None:
        retry = RETRY_MIN
        while not self._stop.is_set():
            opened, self._opened = self._opened, None
            if opened is None:
                try:
                    opened = self._open_container()
                except SourceError as exc:
                    self._set_failed(str(exc))
                    self._show_no_signal(retry)
                    retry = min(RETRY_MAX, retry * 2)
                    continue
            retry = RETRY_MIN
            container, stream = opened
            try:
                self._read(container, stream)
                self._set_failed(f"{self.description}: the stream ended")
            except (av.FFmpegError, OSError) as exc:
                self._set_failed(f"{self.description}: {exc}")
            finally:
                self._decoder = None
                self.frames.decoding = False
                container.close()

    def _read(self, container: Any, stream: Any) -> None:
        extradata = bytes(stream.codec_context.extradata or b"")
        avcc = extradata[:1] == b"\x01"
        annexb = BitStreamFilterContext("h264_mp4toannexb", stream) if avcc else None
        self._parameter_sets = (
            {} if avcc else {n[0] & 0x1F: n for n in nal_units(extradata) if n[0] & 0x1F in (7, 8)}
        )
        self._max_pts: int | None = None
        self._synced = False
        for packet in container.demux(stream):
            if self._stop.is_set():
                return
            if packet.size == 0:
                continue
            arrival, wall = time.monotonic(), time.time()
            for unit in annexb.filter(packet) if annexb else (packet,):
                self._on_packet(unit, stream, arrival, wall)

    def _on_packet(self, packet: Packet, stream: Any, arrival: float, wall: float) -> None:
        data = bytes(packet)
        if self.passes_through and packet.pts is not None:
            if self._max_pts is not None and packet.pts < self._max_pts:
                self._fall_back("B-frames: presentation times go backwards")
            else:
                self._max_pts = packet.pts
        if not self.passes_through:
            self._decode(data, arrival, wall, publish=True)
            return
        types = set()
        for nal in nal_units(data):
            kind = nal[0] & 0x1F
            types.add(kind)
            if kind in (_NAL_SPS, _NAL_PPS):
                self._parameter_sets[kind] = nal
        keyframe = _NAL_IDR in types or bool(packet.is_keyframe)
        if keyframe and _NAL_SPS not in types:
            sets = self._parameter_sets
            if _NAL_SPS in sets and _NAL_PPS in sets:
                data = _START + sets[_NAL_SPS] + _START + sets[_NAL_PPS] + data
        if not self._synced:
            if not keyframe:
                return
            self._synced = True
        if self._lost_at is not None:
            logger.info("%s is back after %.1f s", self.description, arrival - self._lost_at)
            self._lost_at = None
        self._mark_live()
        self.feed.publish(data, keyframe, arrival, wall)
        self._index += 1
        if self.frames.wanted:
            if self._decoder is None:
                self._catch_up(arrival, wall)  # the cached GOP, this unit included
            else:
                self._decode(data, arrival, wall, publish=True)
        elif self._decoder is not None:
            self._decoder = None
            self.frames.decoding = False

    def _fall_back(self, reason: str) -> None:
        logger.info("%s: decoding and encoding from now on: %s", self.description, reason)
        self._fallback = self.reason = reason
        self.feed.deactivate()

    def _catch_up(self, arrival: float, wall: float) -> None:
        """Start decoding at the cached IDR; publish only the newest picture."""
        gop = self.feed.cached_gop()
        if not gop:
            return  # the next IDR starts it
        for i, unit in enumerate(gop):
            self._decode(unit, arrival, wall, publish=i == len(gop) - 1)
        self.frames.decoding = True

    def _decode(self, data: bytes, arrival: float, wall: float, *, publish: bool) -> None:
        if self._decoder is None:
            decoder = CodecContext.create(self.codec_name or "h264", "r")
            assert isinstance(decoder, VideoCodecContext)
            decoder.thread_type = "SLICE"  # frame threads would delay every picture
            self._decoder = decoder
        try:
            pictures = self._decoder.decode(av.Packet(data))
        except av.FFmpegError as exc:
            logger.debug("%s: decode: %s", self.description, exc)
            return
        for picture in pictures:
            self.frames_decoded += 1
            if not publish:
                continue
            bgr = np.asarray(picture.to_ndarray(format="bgr24"), dtype=np.uint8)
            self._size = (bgr.shape[1], bgr.shape[0])
            if self.feed.size is None:
                self.feed.size = self._size
            if self.reason is not None:  # transcoding: every picture is the source's
                self._mark_live()
                self._index += 1
            frame = CapturedFrame.from_bgr(bgr, self._index, wall)
            self.frames.publish(_at(frame, arrival))
        if self.reason is not None:
            self.frames.decoding = True

    def _mark_live(self) -> None:
        if self.state != "live":
            logger.info("source %s is live", self.description)
            self.state = "live"
            self.last_error = None

    # -- losing the stream ----------------------------------------------------------------------

    def _set_failed(self, message: str) -> None:
        if self.state != "reconnecting" or self.last_error != message:
            logger.warning("%s; retrying", message)
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            self.reconnects += 1  # /metrics: peercam_source_reconnects_total
        self.state = "reconnecting"
        self.last_error = message

    def _show_no_signal(self, duration: float) -> None:
        """ "No signal" pictures for ``duration`` seconds, 5 a second: decoded ones for every
        reader of pictures, and (passing through) encoded ones for the WebRTC viewers."""
        encoder: VideoCodecContext | None = None
        if self.passes_through:
            encoder = _no_signal_encoder(*self._size)
        end = time.monotonic() + duration
        count = 0
        while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
            lost_for = time.monotonic() - (self._lost_at or time.monotonic())
            now, arrival = time.time(), time.monotonic()
            picture = no_signal_picture(*self._size, self.description, lost_for, now)
            self._index += 1
            frame = CapturedFrame.from_bgr(picture, self._index, now, live=False)
            self.frames.publish(frame)
            if encoder is not None:
                video = i420_picture(frame.i420, frame.width, frame.height)
                video.pts = count
                count += 1
                for packet in encoder.encode(video):
                    self.feed.publish(bytes(packet), True, arrival, now)
            self._stop.wait(min(NO_SIGNAL_PERIOD, left))

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        lost = None if self._lost_at is None else round(time.monotonic() - self._lost_at, 1)
        newest = self.frames.get()
        width, height = (newest[1].width, newest[1].height) if newest else self._size
        return super().status() | {
            "width": width,
            "height": height,
            "frames": self._index,
            "lostForSeconds": lost,
            "codec": self.codec_name,
            "profile": self.profile,
            "passthrough": self.passes_through,
            "passthroughReason": self.reason,
            "decoding": self.frames.decoding,
            "framesDecoded": self.frames_decoded,
            **self.feed.status(),
        }

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if self._opened is not None and (self._thread is None or not self._thread.is_alive()):
            self._opened[0].close()
            self._opened = None


def _at(frame: CapturedFrame, arrival: float) -> CapturedFrame:
    """``frame`` stamped with its packet's arrival, the clock pass-through timestamps use, so a
    viewer moving between the passed-through rung and a transcoded one keeps its timeline."""
    return CapturedFrame(
        frame.index, frame.capture_time, arrival, frame.bgr, frame.i420, frame.live
    )
