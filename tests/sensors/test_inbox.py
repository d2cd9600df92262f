"""vigie.sensors._inbox: the bounded inbox between the MQTT reader and the writer.

The reader appends and pauses itself once the inbox is `full`; the writer takes batches and,
when a full inbox has room again, calls `on_room` so that the reader resumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tests.conftest import assert_cancel_lands
from vigie.sensors._inbox import Inbox


class Reader:
    """Stands for the MQTT reader: appends while not paused, paused when full."""

    def __init__(self, inbox: Inbox[int]) -> None:
        self.inbox = inbox
        self.paused = False
        self.resumes = 0
        inbox.on_room = self.resume

    def resume(self) -> None:
        self.paused = False
        self.resumes += 1

    def offer(self, items: list[int]) -> list[int]:
        """Append until paused; return what is left for later (it stays at the broker)."""
        for n, item in enumerate(items):
            if self.paused:
                return items[n:]
            self.inbox.append(item)
            if self.inbox.full:
                self.paused = True
        return []


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_items_arrive_in_order_across_batches() -> None:
    inbox: Inbox[int] = Inbox(10_000)
    for i in range(5_000):
        inbox.append(i)
    received: list[int] = []
    while len(received) < 5_000:
        batch = await inbox.get_batch(37)
        assert 1 <= len(batch) <= 37
        received += batch
    assert received == list(range(5_000))
    assert len(inbox) == 0


async def test_get_batch_takes_at_most_max_items_without_waiting_for_more() -> None:
    inbox: Inbox[int] = Inbox(100)
    for i in range(10):
        inbox.append(i)
    assert await inbox.get_batch(3) == [0, 1, 2]
    assert len(inbox) == 7
    assert await inbox.get_batch(1) == [3]
    assert await inbox.get_batch(100) == [4, 5, 6, 7, 8, 9]
    assert len(inbox) == 0


async def test_get_batch_waits_for_the_first_item() -> None:
    inbox: Inbox[int] = Inbox(10)
    waiting = asyncio.create_task(inbox.get_batch(10))
    await settle()
    assert not waiting.done()
    inbox.append(41)
    inbox.append(42)  # before the writer runs: same batch
    assert await asyncio.wait_for(waiting, 10) == [41, 42]

    # Empty again: the next call waits again (no stale wake-up).
    again = asyncio.create_task(inbox.get_batch(10))
    await settle()
    assert not again.done()
    inbox.append(43)
    assert await asyncio.wait_for(again, 10) == [43]


async def test_a_writer_and_a_reader_interleaved_lose_and_reorder_nothing() -> None:
    inbox: Inbox[int] = Inbox(50)
    reader = Reader(inbox)
    pending = list(range(10_000))
    received: list[int] = []

    async def write() -> None:
        while len(received) < 10_000:
            received.extend(await inbox.get_batch(7))
            await asyncio.sleep(0)

    async def read() -> None:
        nonlocal pending
        while pending:
            if not reader.paused:
                pending = reader.offer(pending[:13]) + pending[13:]
                assert len(inbox) <= inbox.capacity
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(write(), read()), 60)
    assert received == list(range(10_000))
    assert reader.resumes > 0


async def test_full_pauses_the_reader_until_a_batch_makes_room() -> None:
    inbox: Inbox[int] = Inbox(3)
    reader = Reader(inbox)
    left = reader.offer([0, 1, 2, 3, 4, 5])
    assert left == [3, 4, 5] and reader.paused and inbox.full and len(inbox) == 3

    assert await inbox.get_batch(2) == [0, 1]
    assert not reader.paused and reader.resumes == 1  # room again: told once
    left = reader.offer(left)
    assert left == [5] and reader.paused

    rest: list[int] = []
    while len(rest) < 3:
        rest += await inbox.get_batch(10)
        left = reader.offer(left)
    assert rest + await inbox.get_batch(10) == [2, 3, 4, 5]


async def test_on_room_only_when_a_full_inbox_goes_below_capacity() -> None:
    inbox: Inbox[int] = Inbox(3)
    calls: list[int] = []
    inbox.on_room = lambda: calls.append(len(inbox))

    inbox.append(1)
    inbox.append(2)
    assert not inbox.full
    await inbox.get_batch(1)
    assert calls == []  # it was never full

    # A reader may overshoot by the packets it had already read: still full after one batch.
    for i in range(5):
        inbox.append(i)
    assert inbox.full and len(inbox) == 6
    await inbox.get_batch(2)
    await inbox.get_batch(1)
    assert calls == []
    await inbox.get_batch(1)
    assert calls == [2]
    await inbox.get_batch(10)
    assert calls == [2]


@pytest.mark.parametrize("capacity", [1, 2, 100])
async def test_full_at_capacity(capacity: int) -> None:
    inbox: Inbox[int] = Inbox(capacity)
    for i in range(capacity - 1):
        inbox.append(i)
        assert not inbox.full
    inbox.append(capacity)
    assert inbox.full


async def test_get_batch_gives_up_after_its_timeout_and_says_closed_with_none() -> None:
    inbox: Inbox[int] = Inbox(10)
    # The writer waits with a timeout while the database is away, to try it again.
    assert await inbox.get_batch(5, timeout=0) == []
    assert await inbox.get_batch(5, timeout=0.01) == []
    inbox.append(1)
    assert await inbox.get_batch(5, timeout=0) == [1]
    inbox.append(2)
    inbox.close()
    # Closed: what is left is still handed out, then None (not [], which is a timeout).
    assert await inbox.get_batch(5, timeout=0) == [2]
    assert await inbox.get_batch(5, timeout=0) is None
    assert await inbox.get_batch(5) is None


async def test_close_wakes_a_waiting_writer_with_none() -> None:
    inbox: Inbox[int] = Inbox(10)
    waiting = asyncio.create_task(inbox.get_batch(10, timeout=30))
    await settle()
    inbox.close()
    assert await asyncio.wait_for(waiting, 10) is None


async def test_peak_is_the_most_it_held() -> None:
    inbox: Inbox[int] = Inbox(3)
    reader = Reader(inbox)
    reader.offer(list(range(10)))
    await inbox.get_batch(10)
    reader.offer([1])
    assert inbox.peak == 3 and len(inbox) == 1


async def test_a_wait_cancelled_as_an_item_arrives_is_cancelled() -> None:
    # The writer stops by cancelling its wait. asyncio.wait_for on Python 3.11 returned the
    # inner result when the item and the cancel came in one loop turn, swallowing the
    # cancel: the stopping writer went on taking batches.
    def start() -> tuple[Coroutine[Any, Any, Any], Callable[[], None]]:
        inbox: Inbox[int] = Inbox(10)
        return inbox.get_batch(10, timeout=60), lambda: inbox.append(1)

    await assert_cancel_lands(start, "an item")
