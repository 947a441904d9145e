"""One asyncio lock per name, kept only while someone holds or waits on it, so a client
inventing names cannot grow the table: its size is bounded by the requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Hold ``name``'s lock for the body of the ``async with``."""
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users <= 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    def busy(self, name: str) -> bool:
        """Whether someone holds or waits on ``name``'s lock."""
        return name in self._locks

    def __len__(self) -> int:
        return len(self._locks)
