"""Recent storage failures per adapter, remembered briefly so one broken adapter is not
fetched again by every request. Bounded in entries; the clock is passed in (pure)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

DEFAULT_TTL_SECONDS: Final = 10.0
DEFAULT_MAX_ENTRIES: Final = 1024


@dataclass(frozen=True)
class RememberedFailure:
    reason: str
    message: str
    until: float


class FailureMemory:
    def __init__(
        self, ttl_seconds: float = DEFAULT_TTL_SECONDS, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[str, RememberedFailure] = OrderedDict()

    def remember(self, name: str, reason: str, message: str, now: float) -> None:
        self._entries.pop(name, None)
        self._entries[name] = RememberedFailure(reason, message, now + self.ttl_seconds)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def recall(self, name: str, now: float) -> RememberedFailure | None:
        failure = self._entries.get(name)
        if failure is None:
            return None
        if failure.until <= now:
            del self._entries[name]
            return None
        return failure

    def forget(self, name: str) -> None:
        self._entries.pop(name, None)

    def __len__(self) -> int:
        return len(self._entries)
