"""A bounded hand-off from the MQTT network thread to the asyncio writer.

When it is full, `put` blocks the network thread: the broker then stops sending (its
in-flight window is full of unacknowledged messages) instead of vigie dropping anything.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Handoff"]

T = TypeVar("T")


class Handoff(Generic[T]):
    def __init__(self, capacity: int, loop: asyncio.AbstractEventLoop) -> None:
        self._items: deque[T] = deque()
        self._capacity = capacity
        self._loop = loop
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, timeout: float | None = None) -> bool:
        """From any thread; blocks while full. False if closed or timed out."""
        with self._not_full:
            if not self._not_full.wait_for(
                lambda: self._closed or len(self._items) < self._capacity, timeout
            ) or self._closed:
                return False
            self._items.append(item)
            wake = len(self._items) == 1
        if wake:
            # One wake-up per empty→non-empty transition, not one per message.
            self._loop.call_soon_threadsafe(self._ready.set)
        return True

    async def get_batch(self, max_items: int) -> list[T]:
        """Wait for at least one item; take up to `max_items` without waiting more."""
        while True:
            with self._lock:
                if self._items:
                    n = min(max_items, len(self._items))
                    batch = [self._items.popleft() for _ in range(n)]
                    self._ready.clear()
                    if self._items:
                        self._ready.set()
                    self._not_full.notify_all()
                    return batch
                self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Release blocked producers; later puts are refused."""
        with self._not_full:
            self._closed = True
            self._not_full.notify_all()
