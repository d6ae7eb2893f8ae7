"""webrtc/latest.py: the newest value, shared by any number of readers that never queue."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from webrtc.latest import Latest, LatestClosed

BOUND = 5.0  # seconds; only an upper bound so a broken wake-up fails instead of hanging


async def parked(*tasks: asyncio.Task[Any]) -> None:
    """Let ``tasks`` run up to their first suspension, and check they are all suspended.

    ``Latest.next`` has a single await (on the generation's event), so a reader task that has
    run and is not done is waiting for a newer value.
    """
    for _ in range(3):
        await asyncio.sleep(0)  # a scheduling yield, not a timing assumption
    assert not any(task.done() for task in tasks), "a reader returned without a newer value"


async def test_get_returns_none_before_the_first_publish() -> None:
    """A viewer that joins before the first frame must see 'nothing yet', not a crash."""
    latest: Latest[str] = Latest()
    assert latest.get() is None
    assert latest.seq == 0


async def test_get_returns_the_newest_value_and_its_seq_without_waiting() -> None:
    """Status pages read the current frame without becoming a reader."""
    latest: Latest[str] = Latest()
    latest.publish("a")
    assert latest.publish("b") == 2
    assert latest.get() == (2, "b")
    assert latest.seq == 2


async def test_a_reader_behind_gets_the_current_value_at_once() -> None:
    """A new viewer starts from the newest frame instead of waiting for the next one."""
    latest: Latest[str] = Latest()
    latest.publish("a")
    assert await asyncio.wait_for(latest.next(0), BOUND) == (1, "a")


async def test_a_reader_gets_a_value_newer_than_the_one_it_had() -> None:
    """A reader is never handed the same frame twice: it waits for the next one."""
    latest: Latest[str] = Latest()
    seq = latest.publish("a")
    reader = asyncio.create_task(latest.next(seq))
    await parked(reader)
    latest.publish("b")
    assert await asyncio.wait_for(reader, BOUND) == (2, "b")


async def test_a_slow_reader_skips_to_the_newest_value_and_never_queues() -> None:
    """The slowest viewer drops frames instead of building a backlog in memory."""
    latest: Latest[int] = Latest()
    for value in range(1, 101):
        latest.publish(value)
    assert await asyncio.wait_for(latest.next(0), BOUND) == (100, 100)
    # Nothing of 1..99 is left over for it: its next read waits for a value newer than 100.
    reader = asyncio.create_task(latest.next(100))
    await parked(reader)
    latest.publish(101)
    assert await asyncio.wait_for(reader, BOUND) == (101, 101)


async def test_many_readers_all_wake_on_one_publish_and_share_the_value() -> None:
    """Every viewer gets the same frame object from one publish: no per-reader copies."""
    latest: Latest[object] = Latest()
    readers = [asyncio.create_task(latest.next(0)) for _ in range(200)]
    await parked(*readers)
    value = object()
    latest.publish(value)
    results = await asyncio.wait_for(asyncio.gather(*readers), BOUND)
    assert all(seq == 1 and got is value for seq, got in results)


async def test_publishing_from_another_thread_wakes_an_asyncio_reader() -> None:
    """Sources capture on their own threads; viewers wait on the event loop."""
    latest: Latest[str] = Latest()
    reader = asyncio.create_task(latest.next(0))
    await parked(reader)
    publisher = threading.Thread(target=latest.publish, args=("from a thread",))
    publisher.start()
    try:
        assert await asyncio.wait_for(reader, BOUND) == (1, "from a thread")
    finally:
        publisher.join(BOUND)


async def test_many_publishes_from_another_thread_leave_readers_with_the_newest() -> None:
    """A capture thread racing the readers never leaves one stuck on a stale generation."""
    latest: Latest[int] = Latest()
    count = 2000
    done = threading.Event()

    def publish_all() -> None:
        for value in range(1, count + 1):
            latest.publish(value)
        done.set()

    async def read_until_last() -> int:
        seq = reads = 0
        while seq < count:
            seq, value = await latest.next(seq)
            assert value == seq
            reads += 1
        return reads

    readers = [asyncio.create_task(read_until_last()) for _ in range(10)]
    await parked(*readers)
    publisher = threading.Thread(target=publish_all)
    publisher.start()
    try:
        reads = await asyncio.wait_for(asyncio.gather(*readers), BOUND)
    finally:
        publisher.join(BOUND)
    assert done.is_set()
    assert all(1 <= n <= count for n in reads)


async def test_a_cancelled_reader_does_not_disturb_the_others() -> None:
    """A viewer that leaves mid-wait must not take the wake-up away from the others."""
    latest: Latest[str] = Latest()
    leaving = asyncio.create_task(latest.next(0))
    staying = [asyncio.create_task(latest.next(0)) for _ in range(3)]
    await parked(leaving, *staying)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await parked(*staying)
    latest.publish("v")
    assert await asyncio.wait_for(asyncio.gather(*staying), BOUND) == [(1, "v")] * 3


async def test_a_reader_cancelled_after_the_wake_up_does_not_disturb_the_others() -> None:
    """Cancelling a reader whose wake-up is already due must not swallow the others' wake-up."""
    latest: Latest[str] = Latest()
    leaving = asyncio.create_task(latest.next(0))
    staying = asyncio.create_task(latest.next(0))
    await parked(leaving, staying)
    latest.publish("v")
    leaving.cancel()  # before the loop has run either reader again
    results = await asyncio.wait_for(
        asyncio.gather(leaving, staying, return_exceptions=True), BOUND
    )
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == (1, "v")


async def test_close_wakes_waiting_readers_with_latest_closed() -> None:
    """When a source stops, every viewer's sender ends instead of waiting forever."""
    latest: Latest[str] = Latest()
    latest.publish("last")
    readers = [asyncio.create_task(latest.next(1)) for _ in range(5)]
    await parked(*readers)
    latest.close()
    results = await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), BOUND)
    assert all(isinstance(result, LatestClosed) for result in results)


async def test_close_from_another_thread_wakes_waiting_readers() -> None:
    """Source.stop() runs off the loop; its close must still reach the loop's readers."""
    latest: Latest[str] = Latest()
    reader = asyncio.create_task(latest.next(0))
    await parked(reader)
    closer = threading.Thread(target=latest.close)
    closer.start()
    try:
        with pytest.raises(LatestClosed):
            await asyncio.wait_for(reader, BOUND)
    finally:
        closer.join(BOUND)


async def test_reading_after_close_raises_latest_closed_at_once() -> None:
    """A viewer that arrives after the source stopped is told so instead of hanging."""
    latest: Latest[str] = Latest()
    latest.publish("last")
    latest.close()
    with pytest.raises(LatestClosed):
        await asyncio.wait_for(latest.next(0), BOUND)


def test_publishing_with_no_event_loop_and_no_reader_works() -> None:
    """A source may publish before the server's loop exists; that must not fail."""
    latest: Latest[int] = Latest()
    assert latest.publish(1) == 1
    latest.close()
    assert latest.get() == (1, 1)
