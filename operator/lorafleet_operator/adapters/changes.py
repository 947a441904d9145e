"""What changed between two indexes: the substance of the catalog's Events."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lorafleet_api.catalog_index import AdapterRecord

# Events are read by people; a sync that adds 10,000 adapters names a few and counts the rest.
MAX_NAMES_IN_MESSAGE = 10


@dataclass(frozen=True)
class IndexChanges:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def messages(self) -> list[tuple[str, str]]:
        """``(reason, message)`` per kind of change, e.g. ("AdaptersAdded", "Added 2 ...")."""
        result = []
        for reason, verb, names in (
            ("AdaptersAdded", "Added", self.added),
            ("AdaptersChanged", "Changed (new revision)", self.changed),
            ("AdaptersRemoved", "Removed", self.removed),
        ):
            if names:
                result.append((reason, f"{verb} {_count(len(names))}: {_names(names)}"))
        return result


def _count(n: int) -> str:
    return f"{n} adapter" if n == 1 else f"{n} adapters"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = len(names) - MAX_NAMES_IN_MESSAGE
    return f"{shown} and {more} more" if more > 0 else shown


def compare_records(
    previous: Iterable[AdapterRecord], current: Iterable[AdapterRecord]
) -> IndexChanges:
    """Added, changed (new revision or new validity) and removed adapter names, sorted."""
    before = {record.name: record for record in previous}
    after = {record.name: record for record in current}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(
        name
        for name in set(after) & set(before)
        if (after[name].revision, after[name].valid, after[name].reason)
        != (before[name].revision, before[name].valid, before[name].reason)
    )
    return IndexChanges(added=tuple(added), changed=tuple(changed), removed=tuple(removed))
