"""A captured picture, converted once to what every consumer needs."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    """One picture from a source, shared read-only by every encoder and viewer.

    ``bgr`` feeds the JPEG encoder; ``i420`` (planar YUV 4:2:0, shape ``(h*3/2, w)``) feeds the
    video encoders. Both are made once, on the capture thread, so no viewer pays for a
    conversion. Nobody may write into the arrays.
    """

    index: int
    capture_time: float  # wall clock (time.time()), seconds: comparable with a viewer's clock
    monotonic: float  # time.monotonic() at capture: drives presentation timestamps
    bgr: Image
    i420: Image
    live: bool = True  # False for generated pictures ("no signal")
    #: The half-size picture, made once by the first encoder that needs it (see half_i420).
    _half: list[Image] = field(default_factory=list, compare=False, repr=False)
    _half_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])

    def half_i420(self) -> Image | None:
        """``i420`` at half the width and height, or None when that is no whole I420 picture
        (sides not multiples of 4).

        Made on the first call (by an encoder's thread) and kept: every lower rung of a ladder
        scales from it. Halving is OpenCV's area-averaging fast path (~60 µs for 640x480 here,
        against ~0.25 ms for bilinear to 0.6 of the size), and a rung under half size scaled
        from it is both cheaper and less aliased than one scaled from the full picture.
        """
        width, height = self.width, self.height
        if width % 4 or height % 4:
            return None
        with self._half_lock:
            if not self._half:
                self._half.append(_half_i420(self.i420, width, height))
            return self._half[0]

    @classmethod
    def from_bgr(
        cls, bgr: Image, index: int, capture_time: float | None = None, *, live: bool = True
    ) -> CapturedFrame:
        """Wrap a BGR picture, cropping to even dimensions as 4:2:0 requires.

        The frame takes ownership of ``bgr``: it is made read-only (capture threads hand over
        a fresh array per picture, so this costs no copy).
        """
        h, w = bgr.shape[:2]
        if h % 2 or w % 2:
            bgr = bgr[: h - h % 2, : w - w % 2]
        bgr = np.ascontiguousarray(bgr)
        i420: Image = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        bgr.setflags(write=False)
        i420.setflags(write=False)
        return cls(
            index=index,
            capture_time=time.time() if capture_time is None else capture_time,
            monotonic=time.monotonic(),
            bgr=bgr,
            i420=i420,
            live=live,
        )


def i420_planes(i420: Image, width: int, height: int) -> tuple[Image, Image, Image]:
    """The Y, U and V planes of a planar I420 picture (``(h*3/2, w)``, as cv2 makes it) as
    2-D views. The chroma planes are ``h/2`` rows of ``w/2``: by offset, not by rows of the
    array, which they do not fill whole when ``h`` is not a multiple of 4."""
    flat = i420.reshape(-1)
    luma, chroma = width * height, (width // 2) * (height // 2)
    return (
        flat[:luma].reshape(height, width),
        flat[luma : luma + chroma].reshape(height // 2, width // 2),
        flat[luma + chroma : luma + 2 * chroma].reshape(height // 2, width // 2),
    )


def _half_i420(i420: Image, width: int, height: int) -> Image:
    """A planar I420 picture (``(h*3/2, w)``) at half its width and height, plane by plane."""
    half = np.empty((height * 3 // 4, width // 2), np.uint8)
    for source, target in zip(
        i420_planes(i420, width, height), i420_planes(half, width // 2, height // 2), strict=True
    ):
        cv2.resize(source, target.shape[::-1], dst=target, interpolation=cv2.INTER_AREA)
    half.setflags(write=False)
    return half
