"""The bitrate ladder: a few shared encodings of one source, from full size down to a trickle.

Each rung is one shared encoder (:class:`webrtc.encoders.SharedEncoder`), encoded once for every
viewer on it and running only while it has viewers. A viewer's controller
(:mod:`webrtc.controller`) picks the rung its link carries; the viewer's track switches rungs
at an IDR of the target rung. All rungs stamp presentation times from one capture clock (the
ladder's epoch), so a viewer that moves between rungs sees no break in its RTP timestamps.

The default ladder follows the source size: full size at the top bitrate, half its height
at 40 %, 3/8 at 15 %, and a quarter at 7 % and half the frame rate for links of ~150 kbit/s.
Every lower rung spends at least the top's bits per pixel (~0.1; a 3/4-size rung at 40 %, as
at first, starved its pixels at 0.07 bit each). Half and quarter sizes are what the encoders
scale cheaply: each frame is halved once by area averaging (OpenCV's fast path) for every
rung at or under half size, and the quarter is that halved again. Scaling to 0.6 or 0.4 of
the size, as the ladder did before, cost as much as encoding those rungs: all rungs busy cost
1.9x the top alone with H.264 (bench/results/ladder-cost-*).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: What the default ladder's rungs are, relative to the top: (height factor, bitrate factor,
#: frame-rate factor).
DEFAULT_SHAPE = ((1.0, 1.0, 1.0), (0.5, 0.4, 1.0), (0.375, 0.15, 1.0), (0.25, 0.07, 0.5))
#: The bottom rung never asks for more than this, whatever the source: it is for slow links.
BOTTOM_MAX_BITRATE = 90_000
MIN_BITRATE = 30_000
MAX_RUNGS = 6

_RUNG = re.compile(r"^(?:(\d+)p?|full)@(\d+(?:\.\d+)?)([km]?)(?:/(\d+(?:\.\d+)?))?$", re.IGNORECASE)


@dataclass(frozen=True, slots=True, order=True)
class Rung:
    """One encoding of the ladder: at most ``height`` lines (0: the source's), ``bitrate``
    bit/s, ``fps`` frames a second (0: the source's rate)."""

    height: int
    bitrate: int
    fps: float = 0.0

    def __post_init__(self) -> None:
        if self.height < 0 or (self.height and not 16 <= self.height <= 4320):
            raise ValueError(f"rung height {self.height}: must be 16-4320 (or 0: source size)")
        if not MIN_BITRATE <= self.bitrate <= 50_000_000:
            raise ValueError(f"rung bitrate {self.bitrate}: must be {MIN_BITRATE}-50000000 bit/s")
        if self.fps < 0 or self.fps > 120:
            raise ValueError(f"rung frame rate {self.fps}: must be 0-120 (0: the source's)")

    def __str__(self) -> str:
        size = f"{self.height}p" if self.height else "full"
        rate = f"/{self.fps:g}" if self.fps else ""
        return f"{size}@{self.bitrate // 1000}k{rate}"

    @classmethod
    def parse(cls, text: str) -> Rung:
        """``480p@900k``, ``full@2.5m``, ``240p@60k/15`` (15 frames a second).

        Raises:
            ValueError: the text is not a rung.
        """
        match = _RUNG.match(text.strip())
        if match is None:
            raise ValueError(
                f"rung {text!r}: give HEIGHTp@BITRATE[/FPS], e.g. 480p@900k or 240p@60k/15"
            )
        height, number, unit, fps = match.groups()
        scale = {"": 1, "k": 1_000, "m": 1_000_000}[unit.lower()]
        return cls(int(height or 0), round(float(number) * scale), float(fps or 0))


@dataclass(frozen=True, slots=True)
class LadderSpec:
    """What the user asked for: ``auto`` (from the source size), ``off`` (one rung), or rungs."""

    mode: str = "auto"
    rungs: tuple[Rung, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LadderSpec:
        """``auto``, ``off``, or comma-separated rungs (``720p@2500k,360p@500k,180p@80k/15``).

        Raises:
            ValueError: with a message for the user.
        """
        value = text.strip().lower()
        if value in ("auto", "on", ""):
            return cls("auto")
        if value in ("off", "none"):
            return cls("off")
        rungs = tuple(Rung.parse(part) for part in value.split(","))
        if len(rungs) > MAX_RUNGS:
            raise ValueError(f"--ladder: at most {MAX_RUNGS} rungs")
        if len(set(rungs)) != len(rungs):
            raise ValueError("--ladder: a rung is given twice")
        return cls("rungs", rungs)

    def resolve(self, width: int, height: int, fps: float, bitrate: int) -> Ladder:
        """The rungs for a source of this size, top (most bits) first."""
        del width  # sizes follow the height; the aspect ratio is kept by the encoder
        if self.mode == "off":
            return Ladder((Rung(0, bitrate),))
        if self.mode == "rungs":
            rungs = sorted(
                (Rung(0 if r.height >= height else r.height, r.bitrate, r.fps) for r in self.rungs),
                key=lambda r: r.bitrate,
                reverse=True,
            )
            return Ladder(tuple(rungs))
        rungs = []
        for i, (h_factor, b_factor, f_factor) in enumerate(DEFAULT_SHAPE):
            rung_height = 0 if h_factor >= 1 else _even(height * h_factor)
            rate = round(bitrate * b_factor)
            if i == len(DEFAULT_SHAPE) - 1:
                rate = min(rate, BOTTOM_MAX_BITRATE)
            rate = max(MIN_BITRATE, rate)
            rung_fps = 0.0 if f_factor >= 1 else max(5.0, round(fps * f_factor))
            rung = Rung(rung_height, rate, rung_fps)
            if rungs and (rung.bitrate >= rungs[-1].bitrate or rung.height < 16 < height):
                continue  # a tiny source or a low top bitrate: fewer, distinct rungs
            rungs.append(rung)
        return Ladder(tuple(rungs))


def _even(value: float) -> int:
    n = max(16, round(value))
    return n - n % 2


@dataclass(frozen=True, slots=True)
class Ladder:
    """The rungs of one source, top first: index 0 is full quality."""

    rungs: tuple[Rung, ...]

    def __post_init__(self) -> None:
        if not self.rungs:
            raise ValueError("a ladder needs at least one rung")
        bitrates = [r.bitrate for r in self.rungs]
        if bitrates != sorted(bitrates, reverse=True):
            raise ValueError("ladder rungs must be ordered by bitrate, highest first")

    def __len__(self) -> int:
        return len(self.rungs)

    def __getitem__(self, index: int) -> Rung:
        return self.rungs[index]

    def __str__(self) -> str:
        return ",".join(map(str, self.rungs))
