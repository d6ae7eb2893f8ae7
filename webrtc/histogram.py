"""A fixed-bucket histogram of durations: cheap to observe, read by /metrics at scrape time.

Plain numbers, no metrics library: ``webrtc/`` records what happened, ``signaling/metrics``
decides how it is exported.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

#: Encode times of one frame, seconds: 1 ms (a small JPEG) to 250 ms (a stalled 1080p encode).
ENCODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.25)


class Histogram:
    """Counts per upper bound (the last one is +Inf), their sum and their number."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = ENCODE_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bound's bucket (le="bound").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)
