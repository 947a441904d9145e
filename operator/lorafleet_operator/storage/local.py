"""Adapters in a directory: a PersistentVolume mounted into the operator (``file:///mnt/x``)."""

from __future__ import annotations

import os
from pathlib import Path

from lorafleet_api.storage import ACCESS_DENIED, NOT_FOUND, os_error_reason
from lorafleet_operator.adapters import StoredObject
from lorafleet_operator.errors import StorageError, StorageNotFoundError, storage_error
from lorafleet_operator.storage.base import ThreadedStorage


class LocalStorage(ThreadedStorage):
    @property
    def root(self) -> Path:
        return Path(self.location.prefix)

    def _list_blocking(self) -> list[StoredObject]:
        root = self.root
        if not root.is_dir():
            raise StorageNotFoundError(f"directory {root} does not exist")
        objects = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            base = Path(dirpath)
            for filename in sorted(filenames):
                path = base / filename
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue  # removed while we walked; the next sync sees it gone
                objects.append(
                    StoredObject(
                        key=path.relative_to(root).as_posix(),
                        size=stat.st_size,
                        # A rewrite changes the mtime (and usually the inode when written
                        # atomically), so both go into the token.
                        token=f"{stat.st_mtime_ns}-{stat.st_ino}",
                    )
                )
        return objects

    def _read_blocking(self, key: str, max_bytes: int) -> bytes:
        path = self.root / key
        with path.open("rb") as handle:
            return handle.read(max_bytes + 1)

    def _classify(self, err: Exception) -> StorageError | None:
        reason = os_error_reason(err)
        if reason is None or not isinstance(err, OSError):
            return None
        where = err.filename or self.root
        messages = {
            NOT_FOUND: f"{where} does not exist",
            ACCESS_DENIED: f"permission denied reading {where}",
        }
        failed = f"reading {self.root} failed: {err.strerror or err}"
        return storage_error(reason, messages.get(reason, failed))
