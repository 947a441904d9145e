"""Adapter storage: S3 (boto3), GCS (google-cloud-storage) and local folders behind one
interface, plus the scan that turns a listing into validated index records."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.storage import StorageCredentials
from lorafleet_operator.model.adaptercatalog import AdapterCatalogSpec, CatalogSource
from lorafleet_operator.storage.base import DEFAULT_CONCURRENCY, AdapterStorage
from lorafleet_operator.storage.scan import ScanResult, scan_catalog, validation_settings
from lorafleet_operator.storage.scrub import scrub

__all__ = [
    "AdapterStorage",
    "ScanResult",
    "StorageCredentials",
    "StorageFactory",
    "open_storage",
    "scan_catalog",
    "scan_source",
    "scrub",
    "validation_settings",
]


def open_storage(
    source: CatalogSource,
    credentials: StorageCredentials | None = None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> AdapterStorage:
    """The storage for ``source.uri``; SDK modules are imported only for the scheme used."""
    location = source.location
    if location.scheme == "s3":
        from lorafleet_operator.storage.s3 import S3Storage

        return S3Storage(
            location,
            endpoint=source.endpoint,
            region=source.region,
            credentials=credentials,
            concurrency=concurrency,
        )
    if location.scheme == "gs":
        from lorafleet_operator.storage.gcs import GcsStorage

        return GcsStorage(
            location, endpoint=source.endpoint, credentials=credentials, concurrency=concurrency
        )
    from lorafleet_operator.storage.local import LocalStorage

    return LocalStorage(location, concurrency=concurrency)


StorageFactory = Callable[..., AdapterStorage]


async def scan_source(
    spec: AdapterCatalogSpec,
    credentials: StorageCredentials | None = None,
    previous: Mapping[str, AdapterRecord] | None = None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    storage_factory: StorageFactory = open_storage,
) -> ScanResult:
    """Open the catalog's storage, scan it (see :func:`scan_catalog`), and close it whatever
    happened: what a sync, ``lorafleet catalog scan`` and ``lorafleet serve`` each do."""
    storage = storage_factory(spec.source, credentials, concurrency=concurrency)
    try:
        return await scan_catalog(storage, spec, previous)
    finally:
        await storage.close()
