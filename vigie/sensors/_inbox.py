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
        self._ready.set()

    def close(self) -> None:
        """No more items will come: `get_batch` returns [] once the inbox is empty."""
        self._closed = True
        self._ready.set()

    async def get_batch(self, max_items: int) -> list[T]:
        """Wait for at least one item; take up to `max_items` without waiting more.
        An empty list means closed and drained."""
        while not self._items:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        was_full = self.full
        n = min(max_items, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        if was_full and not self.full:
            self.on_room()
        return batch
