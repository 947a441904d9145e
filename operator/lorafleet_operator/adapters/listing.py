"""From a flat object listing to adapter folders.

Every storage backend lists the whole prefix recursively (S3 and GCS have no real folders, and
one recursive listing is far fewer round trips than a listing per folder). Here it is cut into
one :class:`AdapterFolder` per immediate subfolder; files directly under the prefix are stray.

Symbolic links exist only in mounted folders (``file://``). The listing reports them as links
(never followed, never read) so that validation refuses their folder (``Symlink``): a link can
point anywhere on the operator's or a replica's disk (``/etc/passwd``, a service account
token), and one that stays inside the catalog still makes two adapters share files behind
the listing's back. A link that is the adapter folder itself is listed as ``<name>/``."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from lorafleet_api.adapter_files import CONFIG_FILE as CONFIG_FILE  # re-exported

# StoredObject.link: where a symbolic link points.
LINK_INSIDE: Final = "inside"
LINK_OUTSIDE: Final = "outside"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object (file) under the catalog's prefix.

    ``key`` is relative to the prefix (``support-v2/adapter_config.json``); ``token`` is what
    changes when the object is rewritten (S3 ETag, GCS generation, mtime for files)."""

    key: str
    size: int
    token: str
    # A symbolic link (mounted folders only): LINK_INSIDE or LINK_OUTSIDE the catalog's folder.
    link: str | None = None


@dataclass(frozen=True, slots=True)
class AdapterFolder:
    """The objects of one adapter folder: ``files`` at its top (name → object) and the
    relative paths of anything in deeper subfolders; ``links`` are the symbolic links in it
    (keys relative to the folder, ``""`` for the folder itself), never in ``files``."""

    name: str
    files: dict[str, StoredObject] = field(default_factory=dict)
    nested: tuple[str, ...] = ()
    links: tuple[StoredObject, ...] = ()

    @property
    def revision(self) -> str:
        """Changes whenever a file at the top of the folder is added, removed or rewritten."""
        digest = hashlib.sha256()
        for name in sorted(self.files):
            stored = self.files[name]
            digest.update(f"{name}\0{stored.size}\0{stored.token}\n".encode())
        for link in self.links:  # none outside mounted folders: their revisions are unchanged
            digest.update(f"link\0{link.key}\0{link.token}\n".encode())
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
    links: dict[str, list[StoredObject]] = {}
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
        if stored.link is not None:
            relative = rest.rstrip("/")
            links.setdefault(head, []).append(
                StoredObject(key=relative, size=0, token=stored.token, link=stored.link)
            )
            continue
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
            name=name,
            files=files[name],
            nested=tuple(sorted(nested[name])),
            links=tuple(sorted(links.get(name, ()), key=lambda link: link.key)),
        )
    return FolderListing(folders=folders, stray_files=stray, excluded=excluded)
