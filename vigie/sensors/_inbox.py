"""The bounded inbox between the MQTT reader and the database writer.

Both run on the event loop. When the inbox is full the reader stops reading from the broker's
socket; the broker then holds what follows (its in-flight window is full of unacknowledged
messages) instead of vigie dropping anything. Reading resumes once the writer has made room.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self.peak = 0  # the most items it ever held: the bound, measured
        # Called when a full inbox has room again (the reader resumes reading).
        self.on_room: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def append(self, item: T) -> None:
        """Add an item; the reader checks `full` afterwards and pauses itself."""
        self._items.append(item)
        if len(self._items) > self.peak:
            self.peak = len(self._items)
        self._ready.set()

    def close(self) -> None:
        """No more items will come: `get_batch` returns [] once the inbox is empty."""
        self._closed = True
        self._ready.set()

    def wake(self) -> None:
        """End a `get_batch` waiting with a timeout now, empty-handed."""
        self._ready.set()

    async def get_batch(self, max_items: int, timeout: float | None = None) -> list[T] | None:
        """Wait for at least one item (at most `timeout` seconds: then []); take up to
        `max_items` without waiting more. None means closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            if timeout is None:
                await self._ready.wait()
                continue
            if timeout <= 0:
                return []
            try:
                # Not wait_for: on Python 3.11 it swallows a cancel that comes in the loop
                # turn an item arrives, and a stopping writer would take one more batch.
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return [] if self._items or not self._closed else None
            if not self._items and not self._closed:
                return []  # woken (`wake`): the caller has something else to do first
        was_full = self.full
        n = min(max_items, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        if was_full and not self.full:
            self.on_room()
        return batch
