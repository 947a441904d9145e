"""Bounded metric labels for adapters: the first ``k`` adapters seen keep their own label,
every other one is counted under ``other``, so a client inventing names cannot grow the
metric series without bound. Pure."""

from __future__ import annotations

from typing import Final

OTHER: Final = "other"
BASE: Final = "base"
DEFAULT_TOP_K: Final = 50


class AdapterLabels:
    def __init__(self, k: int = DEFAULT_TOP_K) -> None:
        self.k = k
        self._named: set[str] = set()

    @property
    def size(self) -> int:
        return len(self._named)

    def label(self, adapter: str | None) -> str:
        """The label value for ``adapter`` (None is the base model)."""
        if adapter is None:
            return BASE
        if adapter in self._named:
            return adapter
        if len(self._named) < self.k:
            self._named.add(adapter)
            return adapter
        return OTHER
