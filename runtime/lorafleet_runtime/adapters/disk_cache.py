"""Adapter files on a replica's local disk: downloaded once, verified, cached within a byte
budget.

A download goes to a ``.partial-*`` folder, is checked against the catalog record (the same
file names, each with the recorded size), and only then renamed to ``<name>@<revision>``: a
folder under that name is complete by construction, and a download killed half-way leaves only
a ``.partial-*`` folder, which nothing loads and the next start deletes. A new revision is a new
folder, so old weights are never served under a new revision. Different adapters download in
parallel; concurrent requests for the same one share one download (a per-name lock that lives
only while someone waits on it)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.storage import ACCESS_DENIED, NOT_FOUND
from lorafleet_runtime.adapters.remote_files import (
    AdapterFileSource,
    AdapterStorageError,
    remove_tree,
)
from lorafleet_runtime.core.locks import KeyedLocks

log = logging.getLogger(__name__)

PARTIAL_PREFIX: Final = ".partial-"
DEFAULT_CACHE_BYTES: Final = 10 * 1024**3
DEFAULT_TIMEOUT_SECONDS: Final = 300.0
DEFAULT_TRIES: Final = 3
# Failures another try cannot mend (the others: unreachable storage, a timeout).
CORRUPT: Final = "Corrupt"
_FINAL_REASONS: Final = frozenset({ACCESS_DENIED, NOT_FOUND, CORRUPT})


@dataclass(frozen=True)
class CachedAdapter:
    name: str
    revision: str
    path: Path
    size_bytes: int


@dataclass(frozen=True)
class DownloadReport:
    """What one ``ensure`` did, for metrics."""

    adapter: CachedAdapter
    downloaded_bytes: int
    seconds: float
    tries: int


def folder_name(name: str, revision: str) -> str:
    """``<name>@<hash of revision>``: revisions are opaque strings (ETags may hold quotes)."""
    return f"{name}@{hashlib.sha256(revision.encode()).hexdigest()[:16]}"


class AdapterDiskCache:
    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        tries: int = DEFAULT_TRIES,
        backoff_seconds: float = 0.5,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self.tries = tries
        self.backoff_seconds = backoff_seconds
        self._entries: OrderedDict[str, CachedAdapter] = OrderedDict()  # by name, LRU first
        self._pinned: dict[str, int] = {}
        self._locks = KeyedLocks()
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(PARTIAL_PREFIX + "*"):
            # A download that died with its process: never complete, never loaded.
            remove_tree(leftover)

    # ------------------------------------------------------------------ queries
    def cached(self) -> list[CachedAdapter]:
        return list(self._entries.values())

    def has(self, name: str) -> bool:
        """Whether some revision of ``name`` is on disk (verified)."""
        return name in self._entries

    @property
    def used_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self._entries.values())

    # ------------------------------------------------------------------ pinning
    def pin(self, name: str) -> None:
        """Keep ``name``'s folder on disk (the engine may read it again)."""
        self._pinned[name] = self._pinned.get(name, 0) + 1

    def unpin(self, name: str) -> None:
        count = self._pinned.get(name, 0) - 1
        if count > 0:
            self._pinned[name] = count
        else:
            self._pinned.pop(name, None)
        self._evict_over_budget()

    # ------------------------------------------------------------------ download
    async def ensure(self, record: AdapterRecord, source: AdapterFileSource) -> DownloadReport:
        """The verified local folder of ``record``'s revision, downloading it if needed."""
        async with self._locks.hold(record.name):
            started = time.monotonic()
            current = self._entries.get(record.name)
            if current is not None and current.revision == record.revision:
                self._entries.move_to_end(record.name)
                return DownloadReport(current, 0, 0.0, 0)
            final = self.root / folder_name(record.name, record.revision)
            if final.is_dir() and _matches(final, record):
                entry = CachedAdapter(record.name, record.revision, final, record.size_bytes)
                self._adopt(entry)
                return DownloadReport(entry, 0, time.monotonic() - started, 0)
            tries = 0
            while True:
                tries += 1
                try:
                    written = await self._download(record, source, final)
                    break
                except AdapterStorageError as err:
                    if tries >= self.tries or err.reason in _FINAL_REASONS:
                        raise
                    log.info("Retrying download of %s after %s", record.name, err.reason)
                    await asyncio.sleep(self.backoff_seconds * 2 ** (tries - 1))
            entry = CachedAdapter(record.name, record.revision, final, record.size_bytes)
            self._adopt(entry)
            return DownloadReport(entry, written, time.monotonic() - started, tries)

    async def _download(self, record: AdapterRecord, source: AdapterFileSource, final: Path) -> int:
        partial = self.root / f"{PARTIAL_PREFIX}{uuid.uuid4().hex}"
        partial.mkdir()
        deadline = time.monotonic() + self.timeout_seconds
        try:
            written = 0
            for file in record.files:
                size = await asyncio.to_thread(
                    source.copy_file, record.uri, file.name, partial / file.name, deadline
                )
                if size != file.size:
                    raise AdapterStorageError(
                        CORRUPT,
                        f"{record.uri}{file.name}: got {size} bytes, the catalog recorded "
                        f"{file.size} (changed since the last sync?)",
                    )
                written += size
            remove_tree(final)
            partial.rename(final)
            return written
        finally:
            if partial.exists():
                remove_tree(partial)

    def _adopt(self, entry: CachedAdapter) -> None:
        previous = self._entries.pop(entry.name, None)
        self._entries[entry.name] = entry
        if previous is not None and previous.path != entry.path:
            # A new revision replaced this one: its weights must not be loaded again.
            remove_tree(previous.path)
        self._evict_over_budget()

    def _evict_over_budget(self) -> None:
        for name in list(self._entries):
            if self.used_bytes <= self.max_bytes:
                return
            if name in self._pinned or self._locks.busy(name):
                continue
            entry = self._entries.pop(name)
            remove_tree(entry.path)
            log.info("Evicted adapter %s from the disk cache", name)


def _matches(folder: Path, record: AdapterRecord) -> bool:
    """Whether a folder left by an earlier run holds exactly the recorded files and sizes."""
    try:
        return all((folder / f.name).stat().st_size == f.size for f in record.files)
    except OSError:
        return False
