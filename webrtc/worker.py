"""The loop shared by every encoder: newest frame in, blocking work on a thread, result out."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from .frames import CapturedFrame
from .histogram import Histogram
from .latest import Latest, LatestClosed
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

R = TypeVar("R")


class FrameWorker(abc.ABC, Generic[R]):
    """Runs one blocking step on each newest frame of a source, on a thread of its own.

    Latest frame wins: a step slower than the source skips frames, it never queues them. One
    thread per worker, because codec state is sequential, and so that a busy worker never
    delays another. Subclasses say what runs on the thread (:meth:`_prepare`), what happens
    with its result on the loop (:meth:`_deliver`) and how readers learn of the end
    (:meth:`_ended`).
    """

    def __init__(self, frames: Latest[CapturedFrame], name: str) -> None:
        self._frames = frames
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"peercam-{name}")
        self._closed = False
        #: How long the blocking step took, per frame (read by /metrics).
        self.step_seconds = Histogram()

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"peercam-{self._name}"
        )

    async def aclose(self) -> None:
        """Stop, let every reader know, and release the thread."""
        self._closed = True
        self._ended()
        await cancel_and_wait(self._task)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _ready(self) -> None:
        """On the loop, before each wait for a frame: until there is work to do at all (a
        group of encoders without members waits here, not on every frame)."""

    def _wants(self, frame: CapturedFrame) -> bool:
        """On the loop: whether to work on ``frame`` at all (a lower frame rate skips some)."""
        return True

    @abc.abstractmethod
    def _prepare(self, frame: CapturedFrame, seq: int) -> Callable[[], R]:
        """On the loop: the blocking step for ``frame``, to run on the worker's thread."""

    @abc.abstractmethod
    def _deliver(self, result: R, frame: CapturedFrame) -> None:
        """On the loop: hand the step's result to the readers."""

    @abc.abstractmethod
    def _ended(self) -> None:
        """Wake every reader: no more results come."""

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        after = 0
        try:
            while True:
                await self._ready()
                after, frame = await self._frames.next(after)
                if not self._wants(frame):
                    continue
                result, took = await loop.run_in_executor(
                    self._executor, timed, self._prepare(frame, after)
                )
                self.step_seconds.observe(took)
                self._deliver(result, frame)
        except (asyncio.CancelledError, LatestClosed):
            pass  # normal endings: the last user left, or the source closed
        except Exception:
            logger.exception("%s failed", self._name)
        finally:
            # Readers must learn that no more results come, whatever happened.
            self._closed = True
            self._ended()


def timed(step: Callable[[], R]) -> tuple[R, float]:
    """Runs ``step`` on the worker's thread: its result and how long it took there."""
    started = time.perf_counter()
    result = step()
    return result, time.perf_counter() - started
