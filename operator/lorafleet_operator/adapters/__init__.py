"""Adapter folders → validated index records. Pure: storage listings and config bytes come in,
:class:`~lorafleet_api.catalog_index.AdapterRecord` values go out (no SDK, no clock)."""

from __future__ import annotations

from lorafleet_operator.adapters.changes import IndexChanges, compare_records
from lorafleet_operator.adapters.listing import (
    CONFIG_FILE,
    LINK_INSIDE,
    LINK_OUTSIDE,
    AdapterFolder,
    FolderListing,
    StoredObject,
    group_folders,
)
from lorafleet_operator.adapters.validation import (
    MAX_CONFIG_BYTES,
    REASONS,
    refuse_name_clashes,
    validate_adapter,
)

__all__ = [
    "CONFIG_FILE",
    "LINK_INSIDE",
    "LINK_OUTSIDE",
    "MAX_CONFIG_BYTES",
    "REASONS",
    "AdapterFolder",
    "FolderListing",
    "IndexChanges",
    "StoredObject",
    "compare_records",
    "group_folders",
    "refuse_name_clashes",
    "validate_adapter",
]
