"""Event-loop lag: how late the loop runs a timer, the figure that says "nothing blocks"."""

from __future__ import annotations

import asyncio
from collections import deque

from webrtc.tasks import cancel_and_wait

INTERVAL = 0.05
WINDOW = 1200  # samples: the last minute


class LoopLagMonitor:
    """Samples the event loop's lag every ``INTERVAL`` seconds in an owned task."""

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=WINDOW)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="peercam-loop-lag")

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(INTERVAL)
            self._samples.append(max(0.0, loop.time() - started - INTERVAL))

    def reset(self) -> None:
        self._samples.clear()

    def summary(self) -> dict[str, float | int]:
        """p50, p99 and max lag in milliseconds over the window, and the sample count."""
        ordered = sorted(self._samples)
        if not ordered:
            return {"samples": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

        return {"samples": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)}
