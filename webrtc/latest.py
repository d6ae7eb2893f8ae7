"""The one primitive for "the newest value": publishers overwrite, readers skip.

A :class:`Latest` holds a single value and a sequence number. Publishers (any thread) replace
the value; readers (asyncio tasks) wait for a value newer than the one they saw last. Nothing is
ever queued, so a slow reader skips values instead of building a backlog, and memory does not
depend on the number or speed of readers.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Latest(Generic[T]):
    """The newest value of a stream, shared by any number of readers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._value: T | None = None
        # One event per generation, shared by every waiting reader: waking N readers costs one
        # call into the loop, not N. Each reader awaits it through Event.wait(), so a
        # cancelled reader never disturbs the others.
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def seq(self) -> int:
        """Sequence number of the newest value (0 before the first)."""
        return self._seq

    def publish(self, value: T) -> int:
        """Replace the value; safe from any thread. Returns the new sequence number."""
        with self._lock:
            self._seq += 1
            self._value = value
            seq = self._seq
            changed, self._changed = self._changed, asyncio.Event()
            loop = self._loop
        self._wake(changed, loop)
        return seq

    def close(self) -> None:
        """Wake every reader; later reads raise :class:`LatestClosed`."""
        with self._lock:
            self._closed = True
            changed = self._changed
            loop = self._loop
        self._wake(changed, loop)

    def get(self) -> tuple[int, T] | None:
        """The newest value and its sequence number, without waiting."""
        with self._lock:
            if self._value is None:
                return None
            return self._seq, self._value

    async def next(self, after: int = 0) -> tuple[int, T]:
        """Wait for a value with a sequence number greater than ``after`` and return it.

        Raises:
            LatestClosed: the stream was closed.
        """
        while True:
            with self._lock:
                if self._closed:
                    raise LatestClosed
                if self._seq > after and self._value is not None:
                    return self._seq, self._value
                # The loop of the newest reader: a stream may outlive one loop (tests, restarts).
                self._loop = asyncio.get_running_loop()
                changed = self._changed
            await changed.wait()

    @staticmethod
    def _wake(event: asyncio.Event, loop: asyncio.AbstractEventLoop | None) -> None:
        if loop is None or loop.is_closed():
            return  # nobody has ever waited
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
            return
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:
            pass  # the loop closed between the check and the call: nobody is left to wake


class LatestClosed(Exception):
    """The :class:`Latest` stream was closed while a reader waited on it."""
