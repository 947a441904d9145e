"""List a catalog's source and validate every adapter folder: what a sync records.

The operator's sync and ``lorafleet catalog scan`` both call :func:`scan_catalog`.
Incremental: a folder whose revision matches the previous record (validated under the same
settings) is not read again, so a re-sync of an unchanged catalog costs one listing. A folder
read again costs one small read, its adapter_config.json, and in a mounted folder
(``AdapterStorage.checks_weight_headers``) a second one: the first ``SAFETENSORS_HEAD_BYTES``
of its adapter_model.safetensors, the safetensors header.

Names that differ only by case are judged across the whole listing, after each folder
(``refuse_name_clashes``); a record refused for a clash is never reused, so renaming one of
the folders frees the other at the next sync."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from lorafleet_api.adapter_files import SAFETENSORS_FILE, SAFETENSORS_HEAD_BYTES
from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.naming import is_adapter_name
from lorafleet_operator.adapters import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    AdapterFolder,
    group_folders,
    refuse_name_clashes,
    validate_adapter,
)
from lorafleet_operator.adapters.validation import NAME_CLASH
from lorafleet_operator.errors import AccessDeniedError, StorageNotFoundError
from lorafleet_operator.model.adaptercatalog import AdapterCatalogSpec
from lorafleet_operator.storage.base import AdapterStorage


@dataclass(frozen=True)
class ScanResult:
    records: list[AdapterRecord]  # sorted by name
    stray_files: int
    excluded: int
    configs_read: int
    reused: int

    @property
    def valid(self) -> list[AdapterRecord]:
        return [record for record in self.records if record.valid]

    @property
    def invalid(self) -> list[AdapterRecord]:
        return [record for record in self.records if not record.valid]


def validation_settings(spec: AdapterCatalogSpec) -> str:
    """Changes when a setting that decides validity changes: records validated under other
    settings must be validated again, even if their folder did not change."""
    settings = {
        "uri": spec.source.location.uri,
        "baseModel": spec.base_model,
        "maxAdapterBytes": spec.max_adapter_bytes,
        # Bumped when validation.py changes what it decides or records. 2: modules_to_save, DoRA
        # and rank patterns are valid and recorded (per-engine support, adapter_support.py).
        # 3: symbolic links, safetensors headers, case-only name clashes, base model spellings
        # (hub ids match case-insensitively), deeply nested configs.
        "rules": 3,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# One listing range per this many adapters of the last sync (at most MAX_LISTING_RANGES).
ADAPTERS_PER_LISTING_RANGE = 1_500
MAX_LISTING_RANGES = 8


def listing_splits(previous: Mapping[str, AdapterRecord]) -> list[str]:
    """Keys that cut a listing into ranges of about equal size, from the last sync's
    adapter names; none for small catalogs (one range is as fast there)."""
    names = sorted(previous)
    ranges = min(MAX_LISTING_RANGES, len(names) // ADAPTERS_PER_LISTING_RANGE)
    # "<name>/" keys sort after "<name>": each split keeps a whole folder on one side.
    return [names[len(names) * i // ranges] for i in range(1, ranges)] if ranges > 1 else []


def _needs_config(folder: AdapterFolder, max_adapter_bytes: int) -> bool:
    config = folder.files.get(CONFIG_FILE)
    return (
        config is not None
        and config.size <= MAX_CONFIG_BYTES
        and folder.size_bytes <= max_adapter_bytes
        and is_adapter_name(folder.name)
        and not folder.links
    )


def _needs_weights_head(folder: AdapterFolder, config: bytes | None) -> bool:
    weights = folder.files.get(SAFETENSORS_FILE)
    return config is not None and weights is not None and weights.size > 0


async def scan_catalog(
    storage: AdapterStorage,
    spec: AdapterCatalogSpec,
    previous: Mapping[str, AdapterRecord] | None = None,
) -> ScanResult:
    """Every adapter folder under the source, validated.

    ``previous`` are the records of the last good sync under the same
    :func:`validation_settings`. Raises StorageError subclasses when the listing fails or the
    storage becomes unreachable mid-way; an adapter whose config vanished or is forbidden
    between listing and reading is invalid (ConfigUnreadable), not a failed sync."""
    previous = previous or {}
    listing = group_folders(
        await storage.list_objects(split_after=listing_splits(previous)),
        include=spec.include,
        exclude=spec.exclude,
    )
    location = storage.location
    limit = spec.max_adapter_bytes
    records: dict[str, AdapterRecord] = {}
    pending: list[AdapterFolder] = []
    for name, folder in listing.folders.items():
        old = previous.get(name)
        if old is not None and old.revision == folder.revision and old.reason != NAME_CLASH:
            records[name] = old
        else:
            pending.append(folder)

    semaphore = asyncio.Semaphore(storage.concurrency)
    configs_read = 0

    async def validate(folder: AdapterFolder) -> None:
        nonlocal configs_read
        config: bytes | None = None
        unreadable: str | None = None
        if _needs_config(folder, limit):
            async with semaphore:
                try:
                    config = await storage.read(f"{folder.name}/{CONFIG_FILE}", MAX_CONFIG_BYTES)
                    configs_read += 1
                except (StorageNotFoundError, AccessDeniedError) as err:
                    unreadable = err.message
        head: bytes | None = None
        head_unreadable: str | None = None
        if storage.checks_weight_headers and _needs_weights_head(folder, config):
            async with semaphore:
                try:
                    head = await storage.read(
                        f"{folder.name}/{SAFETENSORS_FILE}", SAFETENSORS_HEAD_BYTES
                    )
                except (StorageNotFoundError, AccessDeniedError) as err:
                    head_unreadable = err.message
        records[folder.name] = validate_adapter(
            folder,
            config,
            folder_uri=location.folder_uri(folder.name),
            base_model=spec.base_model,
            max_adapter_bytes=limit,
            config_unreadable=unreadable,
            weights_head=head,
            weights_unreadable=head_unreadable,
        )

    try:
        async with asyncio.TaskGroup() as group:
            for folder in pending:
                group.create_task(validate(folder))
    except ExceptionGroup as failures:
        # The first failure says why; the others are the same outage seen by other tasks.
        raise failures.exceptions[0] from None

    return ScanResult(
        records=refuse_name_clashes(records[name] for name in sorted(records)),
        stray_files=listing.stray_files,
        excluded=listing.excluded,
        configs_read=configs_read,
        reused=len(listing.folders) - len(pending),
    )
