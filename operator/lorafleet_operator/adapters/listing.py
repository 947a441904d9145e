"""From a flat object listing to adapter folders.

Every storage backend lists the whole prefix recursively (S3 and GCS have no real folders, and
one recursive listing is far fewer round trips than a listing per folder). Here it is cut into
one :class:`AdapterFolder` per immediate subfolder; files directly under the prefix are stray."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

CONFIG_FILE: Final = "adapter_config.json"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object (file) under the catalog's prefix.

    ``key`` is relative to the prefix (``support-v2/adapter_config.json``); ``token`` is what
    changes when the object is rewritten (S3 ETag, GCS generation, mtime for files)."""

    key: str
    size: int
    token: str


@dataclass(frozen=True, slots=True)
class AdapterFolder:
    """The objects of one adapter folder: ``files`` at its top (name → object) and the
    relative paths of anything in deeper subfolders."""

    name: str
    files: dict[str, StoredObject] = field(default_factory=dict)
    nested: tuple[str, ...] = ()

    @property
    def revision(self) -> str:
        """Changes whenever a file at the top of the folder is added, removed or rewritten."""
        digest = hashlib.sha256()
        for name in sorted(self.files):
            stored = self.files[name]
            digest.update(f"{name}\0{stored.size}\0{stored.token}\n".encode())
        return digest.hexdigest()[:16]

    @property
    def size_bytes(self) -> int:
        return sum(stored.size for stored in self.files.values())


@dataclass(frozen=True, slots=True)
class FolderListing:
    folders: dict[str, AdapterFolder]
    stray_files: int
    excluded: int


def _selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def group_folders(
    objects: Iterable[StoredObject],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> FolderListing:
    """Group objects by their first path component.

    Folder markers (keys ending in ``/``, written by some consoles) are not files. Folders
    left out by ``include``/``exclude`` are counted, not listed."""
    files: dict[str, dict[str, StoredObject]] = {}
    nested: dict[str, list[str]] = {}
    stray = 0
    for stored in objects:
        head, sep, rest = stored.key.partition("/")
        if not sep:
            stray += 1
            continue
        if not head:
            continue  # a key with an empty segment ("//x"); no folder to name
        files.setdefault(head, {})
        nested.setdefault(head, [])
        if not rest or rest.endswith("/"):
            continue  # a folder marker
        if "/" in rest:
            nested[head].append(rest)
        else:
            files[head][rest] = stored
    folders: dict[str, AdapterFolder] = {}
    excluded = 0
    for name in sorted(files):
        if not _selected(name, include, exclude):
            excluded += 1
            continue
        folders[name] = AdapterFolder(
            name=name, files=files[name], nested=tuple(sorted(nested[name]))
        )
    return FolderListing(folders=folders, stray_files=stray, excluded=excluded)
