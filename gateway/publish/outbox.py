"""A bounded, drop-oldest queue between producers (pollers, controllers) and the publisher.

Producers never wait: when the publisher falls behind (a slow or absent broker), the oldest
item is dropped and counted, so polling and control keep their schedule.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Message:
    """A ready-made MQTT message."""

    topic: str
    payload: bytes
    retain: bool = False


class Outbox(Generic[T]):
    """Bounded FIFO; ``put`` never blocks, ``drain`` waits for at least one item."""

    def __init__(self, maxsize: int) -> None:
        self._items: deque[T] = deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Append; drops (and counts) the oldest item when full."""
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    async def drain(self, limit: int = 1000) -> list[T]:
        """Wait until something is queued, then take up to ``limit`` items."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        items = self._items
        count = min(limit, len(items))
        return [items.popleft() for _ in range(count)]

    def take_all(self) -> list[T]:
        """Everything queued, without waiting (for the final flush at shutdown)."""
        items = list(self._items)
        self._items.clear()
        return items
