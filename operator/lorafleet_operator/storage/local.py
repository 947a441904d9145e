"""Adapters in a directory: a PersistentVolume mounted into the operator (``file:///mnt/x``).

Symbolic links below the folder are listed as links and never followed, by the listing or by
a read (see ``adapters.listing``); the folder itself may sit behind links (it is the mount the
operator's administrator chose)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lorafleet_api.storage import (
    ACCESS_DENIED,
    NOT_FOUND,
    LinkRefusedError,
    open_below,
    os_error_reason,
)
from lorafleet_operator.adapters import LINK_INSIDE, LINK_OUTSIDE, StoredObject
from lorafleet_operator.errors import StorageError, StorageNotFoundError, storage_error
from lorafleet_operator.storage.base import ThreadedStorage


class LocalStorage(ThreadedStorage):
    checks_weight_headers = True  # a local read, no request

    @property
    def root(self) -> Path:
        return Path(self.location.prefix)

    def _list_blocking(self) -> list[StoredObject]:
        root = self.root
        if not root.is_dir():
            raise StorageNotFoundError(f"directory {root} does not exist")
        objects = []
        real_root = root.resolve()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            base = Path(dirpath)
            # os.walk lists a link to a folder with the folders (and does not descend).
            folder_links = sorted(name for name in dirnames if (base / name).is_symlink())
            dirnames[:] = sorted(name for name in dirnames if name not in folder_links)
            for name in folder_links:
                link = self._link(root, real_root, base / name)
                if link is not None:
                    objects.append(StoredObject(link.key + "/", 0, link.token, link.link))
            for filename in sorted(filenames):
                path = base / filename
                if path.is_symlink():
                    link = self._link(root, real_root, path)
                    if link is not None:
                        objects.append(link)
                    continue
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

    @staticmethod
    def _link(root: Path, real_root: Path, path: Path) -> StoredObject | None:
        try:
            target = str(path.readlink())
        except FileNotFoundError:
            return None  # removed while we walked
        # Where it ends up after every link on the way; a dangling link counts as outside.
        resolved = path.resolve()
        inside = resolved.exists() and resolved.is_relative_to(real_root)
        return StoredObject(
            key=path.relative_to(root).as_posix(),
            size=0,
            token="link-" + hashlib.sha256(target.encode(errors="replace")).hexdigest()[:16],
            link=LINK_INSIDE if inside else LINK_OUTSIDE,
        )

    def _read_blocking(self, key: str, max_bytes: int) -> bytes:
        # Never through a link: one may have replaced the file since the listing.
        with open_below(self.root, key) as handle:
            return handle.read(max_bytes + 1)

    def _classify(self, err: Exception) -> StorageError | None:
        reason = os_error_reason(err)
        if reason is None or not isinstance(err, OSError):
            return None
        if isinstance(err, LinkRefusedError):
            return storage_error(reason, f"{self.root}: {err}")
        where = err.filename or self.root
        messages = {
            NOT_FOUND: f"{where} does not exist",
            ACCESS_DENIED: f"permission denied reading {where}",
        }
        failed = f"reading {self.root} failed: {err.strerror or err}"
        return storage_error(reason, messages.get(reason, failed))
