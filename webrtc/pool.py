"""Shared workers, started for their first user and stopped after their last.

One pool holds the video encoders of a source (one per codec), another its JPEG encoders (one
per quality and size). ``started`` counts how many workers were ever started per key: the
observable proof that N users of one key cost one worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Collection, Hashable
from types import TracebackType
from typing import Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)


class Worker(Protocol):
    @property
    def closed(self) -> bool: ...

    def start(self) -> None: ...

    async def aclose(self) -> None: ...


K = TypeVar("K", bound=Hashable)
W = TypeVar("W", bound=Worker)


class Pool(Generic[K, W]):
    """Reference-counted shared workers, keyed by what they produce."""

    def __init__(self, factory: Callable[[K], W], name: str) -> None:
        self._factory = factory
        self._name = name
        self._workers: dict[K, W] = {}
        self._users: dict[K, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.started: Counter[K] = Counter()

    def acquire(self, key: K) -> W:
        """The running worker for ``key``, started if this is its first user."""
        worker = self._workers.get(key)
        if worker is None or worker.closed:
            worker = self._factory(key)
            worker.start()
            self._workers[key] = worker
            self._users[key] = 0
            self.started[key] += 1
            logger.info("%s %s started", self._name, key)
        self._users[key] += 1
        return worker

    def release(self, key: K, worker: W) -> None:
        """One user fewer; the last one out stops the worker (in an owned task)."""
        if self._workers.get(key) is not worker:
            return
        self._users[key] -= 1
        if self._users[key] > 0:
            return
        del self._workers[key]
        del self._users[key]
        task = asyncio.get_running_loop().create_task(worker.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        logger.info("%s %s stopped (no users)", self._name, key)

    def leases(self) -> Leases[K, W]:
        """Workers held by one owner and released together: ``async with pool.leases() as l``."""
        return Leases(self)

    def running(self) -> dict[K, W]:
        return dict(self._workers)

    def users(self, key: K) -> int:
        return self._users.get(key, 0)

    async def aclose(self) -> None:
        workers = list(self._workers.values())
        self._workers.clear()
        self._users.clear()
        await asyncio.gather(*(w.aclose() for w in workers), *self._closing)


class Leases(Generic[K, W]):
    """The workers one owner holds (a viewer's rungs); all released when its block ends."""

    def __init__(self, pool: Pool[K, W]) -> None:
        self._pool = pool
        self._held: dict[K, W] = {}

    def take(self, key: K) -> W:
        """The worker for ``key``, acquired on first use; held until released or the end."""
        worker = self._held.get(key)
        if worker is None or worker.closed:
            if worker is not None:
                self._pool.release(key, worker)
            worker = self._held[key] = self._pool.acquire(key)
        return worker

    def keep_only(self, workers: Collection[W]) -> None:
        """Release every held worker not in ``workers``."""
        for key, worker in list(self._held.items()):
            if worker not in workers:
                del self._held[key]
                self._pool.release(key, worker)

    def held(self) -> dict[K, W]:
        return dict(self._held)

    async def __aenter__(self) -> Leases[K, W]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.keep_only(())
