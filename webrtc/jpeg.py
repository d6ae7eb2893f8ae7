"""Encode once, for every picture viewer: JPEG at a given quality and size.

A :class:`JpegEncoder` runs while it has users. It takes the source's newest frame, encodes it
on its own thread and publishes the result into a :class:`Latest`; every consumer (JPEG over
WebSocket, MJPEG, snapshots, the original system's ``/video``) reads that one result. A slow
consumer skips pictures; nothing queues.
"""

from __future__ import annotations

import base64
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy.typing as npt

from .frames import CapturedFrame
from .latest import Latest
from .pool import Pool
from .worker import FrameWorker

DEFAULT_QUALITY = 75
#: Every JPEG picture is one of a small fixed set of qualities and sizes (the JPEG rungs), so
#: viewers share encoders and no client can start an encoder per parameter: at most
#: ``len(QUALITIES) * len(DIVISORS)`` encoders per source, whatever is asked.
QUALITIES = (30, 40, 50, 60, 75, 85, 95)
DIVISORS = (1, 2, 4)  # full, half and quarter width of the source

#: The header before each JPEG in a binary WebSocket message (docs/protocol.md):
#: magic "PCJ1", sequence (u32), capture time (f64, seconds since the epoch), width, height
#: (u16), all big-endian. 20 bytes.
HEADER = struct.Struct(">4sIdHH")
MAGIC = b"PCJ1"


@dataclass(frozen=True, slots=True)
class JpegKey:
    """What a JPEG encoder produces: a quality and a fraction of the source's width."""

    quality: int = DEFAULT_QUALITY
    divisor: int = 1  # the picture is 1/divisor of the source's width

    @classmethod
    def normalized(
        cls, quality: int | None, max_width: int | None, source_width: int = 0
    ) -> JpegKey:
        """The rung for a request: the nearest quality of the set, and the smallest size at
        least ``max_width`` wide (a width beyond the source's is the source's size)."""
        q = DEFAULT_QUALITY if quality is None else quality
        nearest = min(QUALITIES, key=lambda v: (abs(v - q), -v))
        divisor = 1
        if max_width and source_width:
            for d in reversed(DIVISORS):
                if source_width // d >= max_width:
                    divisor = d
                    break
        return cls(nearest, divisor)

    def smaller(self) -> JpegKey | None:
        """The next rung down for a slow link: lower quality first, then a smaller size."""
        lower = [q for q in QUALITIES if q < self.quality and q >= 50]
        if lower and self.divisor == 1:
            return JpegKey(lower[-1], self.divisor)
        bigger = [d for d in DIVISORS if d > self.divisor]
        if bigger:
            return JpegKey(min(self.quality, 50), bigger[0])
        lowest = [q for q in QUALITIES if q < self.quality]
        return JpegKey(lowest[-1], self.divisor) if lowest else None

    def __str__(self) -> str:
        return f"q{self.quality}" + (f"@1/{self.divisor}" if self.divisor > 1 else "")


def jpeg_rungs(top: JpegKey) -> list[JpegKey]:
    """The rungs a JPEG viewer may step through, from what it asked for down to the smallest."""
    rungs = [top]
    while (below := rungs[-1].smaller()) is not None and len(rungs) < 5:
        rungs.append(below)
    return rungs


BOUNDARY = "peercamframe"


@dataclass(frozen=True, slots=True)
class JpegFrame:
    """One encoded picture, shared read-only by every consumer.

    Each wire form is made once per picture, not once per viewer: ``message`` (header + JPEG,
    for the WebSocket) on the encoder's thread; the MJPEG part and the data URL on first use.
    """

    seq: int
    data: bytes
    capture_time: float
    width: int
    height: int
    message: bytes
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def make(cls, seq: int, data: bytes, capture_time: float, width: int, height: int) -> JpegFrame:
        header = HEADER.pack(MAGIC, seq & 0xFFFFFFFF, capture_time, width, height)
        return cls(seq, data, capture_time, width, height, header + data)

    def mjpeg_part(self) -> bytes:
        """One part of a ``multipart/x-mixed-replace`` stream."""
        part = self._cache.get("mjpeg")
        if part is None:
            head = (
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(self.data)}\r\n\r\n"
            ).encode("ascii")
            part = self._cache["mjpeg"] = head + self.data + b"\r\n"
        assert isinstance(part, bytes)
        return part

    def data_url_message(self) -> str:
        """``{"img": "data:image/jpeg;base64,…"}``: the original system's /video reply."""
        text = self._cache.get("data_url")
        if text is None:
            encoded = base64.b64encode(self.data).decode("ascii")
            text = self._cache["data_url"] = '{"img":"data:image/jpeg;base64,' + encoded + '"}'
        assert isinstance(text, str)
        return text


def encode_jpeg(frame: CapturedFrame, key: JpegKey, seq: int = 0) -> JpegFrame:
    """Encode ``frame`` (blocking: call off the event loop)."""
    image: npt.NDArray[Any] = frame.bgr
    if key.divisor > 1:
        width = max(2, frame.width // key.divisor)
        height = max(2, round(frame.height * width / frame.width))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, key.quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return JpegFrame.make(
        seq, data.tobytes(), frame.capture_time, int(image.shape[1]), int(image.shape[0])
    )


class JpegEncoder(FrameWorker[JpegFrame]):
    """Encodes a source's newest frame to JPEG once per frame, while someone wants it."""

    def __init__(self, key: JpegKey, frames: Latest[CapturedFrame]) -> None:
        super().__init__(frames, f"jpeg-{key}")
        self.key = key
        self.pictures: Latest[JpegFrame] = Latest()
        self.encoded = 0

    def _prepare(self, frame: CapturedFrame, seq: int) -> Callable[[], JpegFrame]:
        return functools.partial(encode_jpeg, frame, self.key, seq)

    def _deliver(self, result: JpegFrame, frame: CapturedFrame) -> None:
        self.encoded += 1
        self.pictures.publish(result)

    def _ended(self) -> None:
        self.pictures.close()


JpegPool = Pool[JpegKey, JpegEncoder]


def make_jpeg_pool(frames: Latest[CapturedFrame]) -> JpegPool:
    """Shared JPEG encoders of one source: one per rung (quality and size), while it has
    users; the keys are a fixed set, so the pool never holds more than a few dozen."""

    def factory(key: JpegKey) -> JpegEncoder:
        return JpegEncoder(key, frames)

    return Pool(factory, "JPEG encoder")


async def next_picture(pool: JpegPool, key: JpegKey, after: int = 0) -> JpegFrame:
    """One picture newer than ``after`` from a shared encoder held only for this call."""
    encoder = pool.acquire(key)
    try:
        return (await encoder.pictures.next(after))[1]
    finally:
        pool.release(key, encoder)
