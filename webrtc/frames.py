"""A captured picture, converted once to what every consumer needs."""

from __future__ import annotations

import time
from dataclasses import dataclass

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

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])

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
