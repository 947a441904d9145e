"""AdapterCatalog: list the source, validate adapters, write the index ConfigMaps and status.

A failed sync changes nothing but the conditions: the last good index (ConfigMaps) and the
counts in status stay, so LoRAModels and the runtime keep serving what they had."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lorafleet_api import names
from lorafleet_api.catalog_index import (
    MANIFEST_KEY,
    PART_MANIFEST,
    SHARD_KEY,
    AdapterRecord,
    IndexFormatError,
    IndexManifest,
    manifest_name,
    read_index,
)
from lorafleet_operator.adapters import IndexChanges, compare_records
from lorafleet_operator.builders import RenderedIndex, index_selector, render_index_configmaps
from lorafleet_operator.errors import AccessDeniedError, LorafleetError
from lorafleet_operator.k8s.client import JsonObj, KubeClient
from lorafleet_operator.model.adaptercatalog import AdapterCatalog
from lorafleet_operator.reconcile.status_patch import write_status
from lorafleet_operator.status import failed_status, synced_status
from lorafleet_operator.storage import (
    StorageCredentials,
    StorageFactory,
    open_storage,
    scan_source,
    validation_settings,
)


@dataclass
class CachedIndex:
    """The last index this process wrote for one catalog: spares reading it back."""

    uid: str | None
    settings: str
    records: dict[str, AdapterRecord]
    manifest: IndexManifest | None = None
    # spec.source.credentialsSecretRef.name at that sync: LoRAModels' Roles name the Secret.
    credentials_secret: str | None = None


@dataclass
class IndexCache:
    entries: dict[tuple[str, str], CachedIndex] = field(default_factory=dict)

    def forget(self, namespace: str, name: str) -> None:
        self.entries.pop((namespace, name), None)


@dataclass(frozen=True)
class SyncOutcome:
    """What one successful sync did, for Events, logs and LoRAModel refreshes."""

    catalog: str
    changes: IndexChanges
    found: int
    valid: int
    invalid: int
    configs_read: int
    configmaps_written: int
    duration_seconds: float
    # Where the time went: "scan" (listing, config reads, validation), "index" (ConfigMaps).
    phase_seconds: dict[str, float]
    # What LoRAModels read of the catalog changed: the rank histogram or adapter sample
    # (status), the index's shard count (their Role names the shards) or the credentials
    # Secret's name (their Role names it too).
    summary_changed: bool


async def read_credentials(kube: KubeClient, catalog: AdapterCatalog) -> StorageCredentials | None:
    ref = catalog.spec.source.credentials_secret_ref
    if ref is None:
        return None
    data = await kube.get_secret_data(catalog.namespace, ref.name)
    if data is None:
        raise AccessDeniedError(
            f"Secret {catalog.namespace}/{ref.name} (source.credentialsSecretRef) does not exist"
        )
    return StorageCredentials.from_secret_data(f"{catalog.namespace}/{ref.name}", data)


async def read_index_configmaps(
    kube: KubeClient, catalog: AdapterCatalog
) -> tuple[list[AdapterRecord], str | None]:
    """The records of the index in the cluster and the settings that produced them; empty
    when there is none (first sync) or it is unreadable (it is rewritten in full then)."""
    configmaps = await kube.list_configmaps(catalog.namespace, index_selector(catalog.name))
    manifest_text: str | None = None
    settings: str | None = None
    shards: dict[str, str] = {}
    for cm in configmaps:
        meta = cm["metadata"]
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or ()}
        if catalog.uid and catalog.uid not in owners:
            continue  # left over from an earlier catalog of the same name
        if (meta.get("labels") or {}).get(names.LABEL_CATALOG_INDEX_PART) == PART_MANIFEST:
            manifest_text = cm["data"].get(MANIFEST_KEY)
            settings = (meta.get("annotations") or {}).get(names.ANNOTATION_VALIDATION_SETTINGS)
        else:
            shards[meta["name"]] = cm["data"].get(SHARD_KEY, "")
    if manifest_text is None:
        return [], None
    try:
        return read_index(manifest_text, shards), settings
    except IndexFormatError:
        return [], None


async def write_index(kube: KubeClient, catalog: AdapterCatalog, rendered: RenderedIndex) -> int:
    """Shards first, the manifest last, then stale shards go: a reader that follows the
    manifest always finds the shards it names. Unchanged ConfigMaps are not written."""
    existing = {
        meta["name"]: meta.get("annotations") or {}
        for meta in await kube.list_configmap_metadata(
            catalog.namespace, index_selector(catalog.name)
        )
    }
    written = 0
    for cm in [*rendered.shard_configmaps, rendered.manifest_configmap]:
        meta = cm["metadata"]
        # The annotations carry the content digest (and, on the manifest, the validation
        # settings): equal annotations mean equal content.
        current = existing.get(meta["name"])
        if current is not None and all(
            current.get(key) == value for key, value in meta["annotations"].items()
        ):
            continue
        await kube.apply_configmap(cm)
        written += 1
    for name in sorted(set(existing) - set(rendered.names)):
        await kube.delete_configmap(catalog.namespace, name)
    return written


async def index_intact(
    kube: KubeClient, catalog: AdapterCatalog, manifest: IndexManifest, settings: str
) -> bool:
    """Whether the ConfigMaps in the cluster are exactly the index ``manifest`` describes (by
    their digest annotations): one metadata-only list call, no data."""
    expected = {ref.name: ref.digest for ref in manifest.shards}
    expected[manifest_name(catalog.name)] = manifest.digest
    existing = {
        meta["name"]: meta.get("annotations") or {}
        for meta in await kube.list_configmap_metadata(
            catalog.namespace, index_selector(catalog.name)
        )
    }
    if set(existing) != set(expected):
        return False
    manifest_annotations = existing[manifest_name(catalog.name)]
    return manifest_annotations.get(names.ANNOTATION_VALIDATION_SETTINGS) == settings and all(
        existing[cm].get(names.ANNOTATION_INDEX_DIGEST) == digest for cm, digest in expected.items()
    )


def _summary(status: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the LoRAModels using the catalog read from its status (``CatalogSnapshot``)."""
    index = status.get("index")
    shards = index.get("shards") if isinstance(index, Mapping) else None
    counts = status.get("counts")
    counts = counts if isinstance(counts, Mapping) else {}
    return (
        status.get("rankHistogram"),
        counts.get("valid"),
        counts.get("servable"),
        status.get("adapters"),
        shards,
    )


def _credentials_secret(catalog: AdapterCatalog) -> str | None:
    ref = catalog.spec.source.credentials_secret_ref
    return ref.name if ref is not None else None


async def sync_adaptercatalog(
    kube: KubeClient,
    body: Mapping[str, Any],
    cache: IndexCache,
    *,
    now: datetime,
    concurrency: int,
    storage_factory: StorageFactory = open_storage,
) -> SyncOutcome:
    """One sync. Raises InvalidSpecError or StorageError after recording the failure in the
    catalog's conditions (the last good index and counts stay)."""
    namespace = body["metadata"].get("namespace") or "default"
    name = body["metadata"]["name"]
    generation = int(body["metadata"].get("generation") or 0)
    previous_status = body.get("status") or {}
    started = time.monotonic()
    try:
        catalog = AdapterCatalog.from_object(body)
        settings = validation_settings(catalog.spec)
        credentials = await read_credentials(kube, catalog)
        cached = cache.entries.get((namespace, name))
        if cached is not None and cached.uid == catalog.uid:
            old_records = list(cached.records.values())
            old_settings: str | None = cached.settings
        else:
            old_records, old_settings = await read_index_configmaps(kube, catalog)
        reusable = {r.name: r for r in old_records} if old_settings == settings else {}
        scan = await scan_source(
            catalog.spec,
            credentials,
            reusable,
            concurrency=concurrency,
            storage_factory=storage_factory,
        )
    except LorafleetError as err:
        status = failed_status(
            generation=generation,
            reason=err.reason,
            message=err.message,
            previous_status=previous_status,
            now=now,
        )
        await write_status(
            kube, namespace, name, previous_status, status, plural=names.ADAPTERCATALOG_PLURAL
        )
        raise

    scanned = time.monotonic()
    changes = compare_records(old_records, scan.records)
    cached = cache.entries.get((namespace, name))
    secret = _credentials_secret(catalog)
    # Only a change this process saw: at start-up every LoRAModel is reconciled anyway.
    secret_changed = cached is not None and cached.credentials_secret != secret
    manifest: IndexManifest | None = None
    written = 0
    if (
        not changes
        and cached is not None
        and cached.manifest is not None
        and cached.uid == catalog.uid
        and cached.settings == settings
        and await index_intact(kube, catalog, cached.manifest, settings)
    ):
        # Nothing changed and the ConfigMaps are as we wrote them: rendering 10,000 records
        # again would only prove it.
        manifest = cached.manifest
    else:
        rendered = render_index_configmaps(catalog, scan.records, settings)
        written = await write_index(kube, catalog, rendered)
        manifest = rendered.manifest
    cache.entries[(namespace, name)] = CachedIndex(
        uid=catalog.uid,
        settings=settings,
        records={r.name: r for r in scan.records},
        manifest=manifest,
        credentials_secret=secret,
    )
    duration = time.monotonic() - started
    phases = {
        "scan": round(scanned - started, 3),
        "index": round(time.monotonic() - scanned, 3),
    }
    status = synced_status(
        generation=generation,
        uri=catalog.spec.source.location.uri,
        records=scan.records,
        stray_files=scan.stray_files,
        excluded=scan.excluded,
        manifest=manifest,
        manifest_configmap=manifest_name(catalog.name),
        previous_status=previous_status,
        now=now,
        duration_seconds=duration,
    )
    # lastSyncTime moves on every sync, so this writes once per sync: one small patch per
    # syncInterval, and `kubectl get` shows when the source was last listed.
    await write_status(
        kube, namespace, name, previous_status, status, plural=names.ADAPTERCATALOG_PLURAL
    )
    valid = sum(1 for r in scan.records if r.valid)
    return SyncOutcome(
        catalog=f"{namespace}/{name}",
        changes=changes,
        found=len(scan.records),
        valid=valid,
        invalid=len(scan.records) - valid,
        configs_read=scan.configs_read,
        configmaps_written=written,
        duration_seconds=duration,
        phase_seconds=phases,
        summary_changed=secret_changed or _summary(status) != _summary(previous_status),
    )


async def loramodels_using(kube: KubeClient, namespace: str, catalog: str) -> list[JsonObj]:
    """LoRAModels in ``namespace`` that list ``catalog`` in spec.catalogs."""
    models = await kube.list(names.API_GROUP, names.API_VERSION, names.LORAMODEL_PLURAL, namespace)
    return [
        model
        for model in models
        if any(
            isinstance(ref, Mapping) and ref.get("name") == catalog
            for ref in (model.get("spec") or {}).get("catalogs") or ()
        )
    ]


__all__ = [
    "CachedIndex",
    "IndexCache",
    "SyncOutcome",
    "loramodels_using",
    "read_index_configmaps",
    "sync_adaptercatalog",
    "write_index",
]
