"""Adapter files on a replica's local disk: downloaded once, verified, cached within a byte
budget.

A download goes to a ``.partial-*`` folder, is checked against the catalog record (the same
file names, each with the recorded size), and only then renamed to ``<name>@<revision>``: a
folder under that name is complete by construction, and a download killed half-way leaves only
a ``.partial-*`` folder, which nothing loads and the next start deletes (a replica's folder is
per process: its replacement deletes the folders of processes that are gone,
:func:`replica_cache_root`). A new revision is a new
folder, so old weights are never served under a new revision. Different adapters download in
parallel; concurrent requests for the same one share one download (a per-name lock that lives
only while someone waits on it).

What the engine is handed is checked as the catalog checks it (``lorafleet_api.adapter_files``),
again, on the downloaded bytes: the files may have changed since the sync. An
adapter_config.json larger than 1 MiB is refused before a byte is fetched (by the recorded
size) and no file is fetched past its recorded size; after the copy, the config must parse and
adapter_model.safetensors must be a complete safetensors file, or nothing is renamed into
place (reason ``ConfigTooLarge``, ``ConfigNotJson`` or ``WeightsNotSafetensors``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lorafleet_api.adapter_files import (
    CONFIG_FILE,
    MAX_SAFETENSORS_HEADER_BYTES,
    SAFETENSORS_FILE,
    config_too_large,
    parse_config,
    safetensors_header_length,
    safetensors_problem,
)
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
REPLICA_PREFIX: Final = "replica-"
DEFAULT_CACHE_BYTES: Final = 10 * 1024**3
DEFAULT_TIMEOUT_SECONDS: Final = 300.0
DEFAULT_TRIES: Final = 3
# Failures another try cannot mend (the others: unreachable storage, a timeout).
CORRUPT: Final = "Corrupt"
CONFIG_TOO_LARGE: Final = "ConfigTooLarge"
CONFIG_NOT_JSON: Final = "ConfigNotJson"
NOT_SAFETENSORS: Final = "WeightsNotSafetensors"
_FINAL_REASONS: Final = frozenset(
    {ACCESS_DENIED, NOT_FOUND, CORRUPT, CONFIG_TOO_LARGE, CONFIG_NOT_JSON, NOT_SAFETENSORS}
)


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


def replica_cache_root(parent: Path, pid: int) -> Path:
    """``<parent>/replica-<pid>``, the cache of the replica process ``pid``, after removing the
    caches of replicas whose process is gone.

    Replicas on one node share ``parent`` (one folder each, so two never write the same
    files); one that was killed (kill -9, OOM) never cleans its folder, and its replacement
    has another pid: without this its adapters and half-written ``.partial-*`` folders would
    stay on the volume for the pod's life, outside every byte budget."""
    parent.mkdir(parents=True, exist_ok=True)
    for folder in parent.glob(REPLICA_PREFIX + "*"):
        other = folder.name[len(REPLICA_PREFIX) :]
        if other.isdigit() and int(other) != pid and not _process_exists(int(other)):
            log.info("Removed the adapter cache of gone replica process %s", other)
            remove_tree(folder)
    return parent / f"{REPLICA_PREFIX}{pid}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


def folder_name(name: str, revision: str) -> str:
    """``<name>@<hash of name and revision>``: revisions are opaque strings (ETags may hold
    quotes), and the exact name is in the hash so that ``Billing`` and ``billing`` (two
    catalogs may hold both) never share a folder on a case-insensitive disk."""
    digest = hashlib.sha256(f"{name}\0{revision}".encode()).hexdigest()[:16]
    return f"{name}@{digest}"


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
            for file in record.files:
                if file.name == CONFIG_FILE and (too_large := config_too_large(file.size)):
                    raise AdapterStorageError(CONFIG_TOO_LARGE, f"{record.uri}: {too_large}")
            written = 0
            for file in record.files:
                size = await asyncio.to_thread(
                    source.copy_file,
                    record.uri,
                    file.name,
                    partial / file.name,
                    deadline,
                    file.size,
                )
                if size != file.size:
                    raise AdapterStorageError(
                        CORRUPT,
                        f"{record.uri}{file.name}: got {size} bytes, the catalog recorded "
                        f"{file.size} (changed since the last sync?)",
                    )
                written += size
            await asyncio.to_thread(_check_files, record, partial)
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


def _check_files(record: AdapterRecord, folder: Path) -> None:
    """Refuse a downloaded folder the engine must not load (see the module docstring)."""
    names = {file.name for file in record.files}
    if CONFIG_FILE in names:
        _, not_json = parse_config((folder / CONFIG_FILE).read_bytes())
        if not_json is not None:
            raise AdapterStorageError(CONFIG_NOT_JSON, f"{record.uri}: {not_json}")
    if SAFETENSORS_FILE in names:
        path = folder / SAFETENSORS_FILE
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            length = safetensors_header_length(head)
            if length is not None and length <= min(MAX_SAFETENSORS_HEADER_BYTES, size):
                head += handle.read(length)
        problem = safetensors_problem(head, size)
        if problem is not None:
            raise AdapterStorageError(NOT_SAFETENSORS, f"{record.uri}: {problem}")


def _matches(folder: Path, record: AdapterRecord) -> bool:
    """Whether a folder left by an earlier run holds exactly the recorded files and sizes."""
    try:
        return all((folder / f.name).stat().st_size == f.size for f in record.files)
    except OSError:
        return False
