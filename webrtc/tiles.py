"""Wall tiles: one small, slow JPEG encoder per camera, shared by every wall that shows it.

A wall of N cameras watched by M people costs N tile encoders (320 px wide, 2 pictures a
second), not N x M viewers' worth: every tile request reads the newest picture of the
camera's one :class:`TileEncoder`. The :class:`TileFeed` starts that encoder on the first
request and stops it when no request came for ``linger`` seconds (walls poll; there is no
connection whose end would say "nobody watches").
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy.typing as npt

from .frames import CapturedFrame
from .jpeg import JpegFrame
from .latest import Latest
from .tasks import cancel_and_wait
from .worker import FrameWorker

logger = logging.getLogger(__name__)

TILE_WIDTH = 320
TILE_FPS = 2.0
TILE_QUALITY = 60
#: Seconds the tile encoder keeps running after the last request.
TILE_LINGER = 5.0


def encode_tile(frame: CapturedFrame, width: int, quality: int, seq: int) -> JpegFrame:
    """``frame`` scaled to ``width`` (never up) as JPEG (blocking: call off the event loop)."""
    image: npt.NDArray[Any] = frame.bgr
    if frame.width > width:
        height = max(2, round(frame.height * width / frame.width))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return JpegFrame.make(
        seq, data.tobytes(), frame.capture_time, int(image.shape[1]), int(image.shape[0])
    )


class TileEncoder(FrameWorker[JpegFrame]):
    """Encodes at most ``fps`` of a source's frames a second, small, to JPEG."""

    def __init__(
        self,
        frames: Latest[CapturedFrame],
        *,
        width: int = TILE_WIDTH,
        fps: float = TILE_FPS,
        quality: int = TILE_QUALITY,
    ) -> None:
        super().__init__(frames, "tile")
        self.pictures: Latest[JpegFrame] = Latest()
        self.width = width
        self.quality = quality
        self.encoded = 0
        self._interval = 1.0 / fps
        self._next_at = 0.0
        #: Whether the newest picture shows the camera (False: a generated "no signal").
        self.live = False

    def _wants(self, frame: CapturedFrame) -> bool:
        if frame.monotonic < self._next_at:
            return False
        # From the frame's own time, so a late frame does not shift the rate for good.
        self._next_at = max(self._next_at + self._interval, frame.monotonic)
        return True

    def _prepare(self, frame: CapturedFrame, seq: int) -> Callable[[], JpegFrame]:
        return functools.partial(encode_tile, frame, self.width, self.quality, seq)

    def _deliver(self, result: JpegFrame, frame: CapturedFrame) -> None:
        self.encoded += 1
        self.live = frame.live
        self.pictures.publish(result)

    def _ended(self) -> None:
        self.pictures.close()


class TileFeed:
    """The tile encoder of one camera: running while walls ask for it, and one owner.

    Owns the encoder and the task that stops it when nobody asked for ``linger`` seconds.
    """

    def __init__(self, frames: Latest[CapturedFrame], *, linger: float = TILE_LINGER) -> None:
        self._frames = frames
        self._linger = linger
        self._encoder: TileEncoder | None = None
        self._task: asyncio.Task[None] | None = None
        self._asked_at = 0.0
        self._closed = False
        self.started = 0

    @property
    def encoder(self) -> TileEncoder | None:
        return self._encoder

    def acquire(self) -> TileEncoder:
        """The running encoder (started if need be); each call keeps it alive for ``linger``."""
        if self._closed:
            raise RuntimeError("the tile feed is closed")
        loop = asyncio.get_running_loop()
        self._asked_at = loop.time()
        if self._encoder is None or self._encoder.closed:
            self._encoder = TileEncoder(self._frames)
            self._encoder.start()
            self.started += 1
            logger.debug("tile encoder started")
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._stop_when_unused(), name="peercam-tile-linger")
        return self._encoder

    async def _stop_when_unused(self) -> None:
        loop = asyncio.get_running_loop()
        # A timer whose deadline moves with every request (no event says "nobody asks").
        while (left := self._asked_at + self._linger - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            logger.debug("tile encoder stopped: no wall asked for %g s", self._linger)
            await encoder.aclose()

    def stats(self) -> dict[str, object]:
        encoder = self._encoder
        return {
            "running": encoder is not None and not encoder.closed,
            "encoded": encoder.encoded if encoder else 0,
            "started": self.started,
        }

    async def aclose(self) -> None:
        self._closed = True
        await cancel_and_wait(self._task)
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            await encoder.aclose()
