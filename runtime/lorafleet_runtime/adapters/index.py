"""Which adapters exist: the merged index of every catalog the model reads, refreshed in the
background from the catalog index the operator writes (format: ``lorafleet_api.catalog_index``).

Two sources of the same format: the index ConfigMaps through the Kubernetes API (in a cluster,
or via KUBECONFIG locally), and a directory holding each ConfigMap as a folder of its keys (what
a mounted ConfigMap volume looks like; `lorafleet serve` writes one). A refresh reads one
manifest per catalog and re-reads shards only when the manifest's digest changed, so polling
every few seconds costs one small GET per catalog. A catalog whose index is missing or
mid-write keeps its last good records.

Storage options (endpoint, region, the credentials Secret) come from the AdapterCatalog. When
the catalog cannot be read (gone, or not served under the version we ask for), or the Secret it
names cannot be, the catalog's storage is marked unavailable and nothing is downloaded from it:
a catalog's Secret is never replaced by other credentials (the pod's own chain)."""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from lorafleet_api import names
from lorafleet_api.catalog_index import (
    MANIFEST_KEY,
    SHARD_KEY,
    AdapterRecord,
    IndexFormatError,
    build_index,
    manifest_name,
    parse_manifest,
    read_index,
)
from lorafleet_api.contract import CatalogRef
from lorafleet_api.storage import ACCESS_DENIED, CATALOG_UNAVAILABLE, StorageCredentials
from lorafleet_runtime.adapters.remote_files import CatalogStorage, StorageUnavailable

log = logging.getLogger(__name__)

DEFAULT_REFRESH_SECONDS: Final = 2.0
# How often a catalog's storage options (AdapterCatalog endpoint, credentials Secret) are read
# again when its index did not change.
STORAGE_REFRESH_SECONDS: Final = 30.0


@dataclass(frozen=True)
class CatalogIndex:
    catalog: str
    digest: str
    storage: CatalogStorage
    records: Mapping[str, AdapterRecord]
    storage_read_at: float = field(default_factory=time.monotonic)


class IndexSource(abc.ABC):
    """Reads one catalog's index; returns None when there is none (yet)."""

    @abc.abstractmethod
    async def manifest_text(self, catalog: CatalogRef) -> str | None: ...

    @abc.abstractmethod
    async def shard_texts(self, catalog: CatalogRef, names: Sequence[str]) -> dict[str, str]: ...

    async def storage(self, catalog: CatalogRef, uri: str) -> CatalogStorage:
        """How to reach the catalog's storage at ``uri``, as far as the source knows: the
        AdapterCatalog's endpoint and region and the Secret named by
        ``credentialsSecretRef`` (without one, the SDKs use the pod's standard chain), or
        why those could not be read (then nothing is downloaded)."""
        return CatalogStorage(uri=uri)

    async def close(self) -> None:
        return None


class DirectoryIndexSource(IndexSource):
    """``<root>/<ConfigMap name>/<key>``, as a ConfigMap volume mount lays it out."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def manifest_text(self, catalog: CatalogRef) -> str | None:
        path = self.root / manifest_name(catalog.name) / MANIFEST_KEY
        return await asyncio.to_thread(_read_or_none, path)

    async def storage(self, catalog: CatalogRef, uri: str) -> CatalogStorage:
        # No Secrets in a directory: local runs use the standard chains (env and so on).
        path = self.root / manifest_name(catalog.name) / STORAGE_OPTIONS_FILE
        text = await asyncio.to_thread(_read_or_none, path)
        if text is None:
            return CatalogStorage(uri=uri)
        options = json.loads(text)
        return CatalogStorage(uri, endpoint=options.get("endpoint"), region=options.get("region"))

    async def shard_texts(self, catalog: CatalogRef, names: Sequence[str]) -> dict[str, str]:
        texts: dict[str, str] = {}
        for name in names:
            text = await asyncio.to_thread(_read_or_none, self.root / name / SHARD_KEY)
            if text is not None:
                texts[name] = text
        return texts


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


class KubernetesIndexSource(IndexSource):
    """The index ConfigMaps (and the AdapterCatalog's storage options) through the API.

    Needs only ``get`` on configmaps and adaptercatalogs in the catalogs' namespace, and on
    the Secrets that catalogs name in ``credentialsSecretRef``."""

    def __init__(self) -> None:
        self._api: Any = None
        self._custom: Any = None
        self._client: Any = None

    async def _connect(self) -> None:
        if self._api is not None:
            return
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        # As the operator does: KUBECONFIG when set; else the client library's rule
        # (~/.kube/config when there is one, else the pod's service account).
        kubeconfig = os.environ.get("KUBECONFIG")
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        else:
            await config.load_config(client_configuration=configuration)
        self._client = client.ApiClient(configuration)
        self._api = client.CoreV1Api(self._client)
        self._custom = client.CustomObjectsApi(self._client)

    async def _config_map(self, namespace: str, name: str, key: str) -> str | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        await self._connect()
        try:
            config_map = await self._api.read_namespaced_config_map(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        data = config_map.data or {}
        value = data.get(key)
        return value if isinstance(value, str) else None

    async def manifest_text(self, catalog: CatalogRef) -> str | None:
        return await self._config_map(catalog.namespace, manifest_name(catalog.name), MANIFEST_KEY)

    async def shard_texts(self, catalog: CatalogRef, names: Sequence[str]) -> dict[str, str]:
        texts = await asyncio.gather(
            *(self._config_map(catalog.namespace, name, SHARD_KEY) for name in names)
        )
        return {name: text for name, text in zip(names, texts, strict=True) if text is not None}

    async def storage(self, catalog: CatalogRef, uri: str) -> CatalogStorage:
        from kubernetes_asyncio.client.exceptions import ApiException

        await self._connect()
        where = f"{catalog.namespace}/{catalog.name}"
        try:
            obj = await self._custom.get_namespaced_custom_object(
                names.API_GROUP,
                names.API_VERSION,
                catalog.namespace,
                names.ADAPTERCATALOG_PLURAL,
                catalog.name,
            )
        except ApiException as err:
            if err.status not in (403, 404):
                raise  # a passing API fault: the last storage options stay
            # The index is there but the catalog is not (deleted, its index not yet
            # collected; or not served as this version): its endpoint and Secret are
            # unknown, and the pod's own credentials must not stand in for them.
            what = "does not exist" if err.status == 404 else "may not be read (RBAC)"
            return CatalogStorage(
                uri,
                unavailable=StorageUnavailable(
                    CATALOG_UNAVAILABLE,
                    f"AdapterCatalog {where} {what} ({names.API_GROUP_VERSION}): its storage "
                    "credentials are unknown, so nothing is downloaded from it",
                ),
            )
        source = (obj.get("spec") or {}).get("source") or {}
        endpoint, region = source.get("endpoint"), source.get("region")
        secret_name = (source.get("credentialsSecretRef") or {}).get("name")
        if not secret_name:
            return CatalogStorage(uri, endpoint=endpoint, region=region)
        credentials, unavailable = await self._credentials(catalog.namespace, secret_name)
        return CatalogStorage(uri, endpoint, region, credentials, unavailable)

    async def _credentials(
        self, namespace: str, name: str
    ) -> tuple[StorageCredentials | None, StorageUnavailable | None]:
        """The decoded Secret, or why it cannot be read (status only: an API error body
        could quote the request, never the Secret's data)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        where = f"{namespace}/{name}"
        try:
            secret = await self._api.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404:
                message = f"credentials Secret {where} does not exist"
            elif err.status == 403:
                message = f"not allowed to read credentials Secret {where} (RBAC: get secrets)"
            else:
                message = f"could not read credentials Secret {where} (HTTP {err.status})"
            return None, StorageUnavailable(ACCESS_DENIED, message)
        return StorageCredentials.from_secret_data(where, secret.data), None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


@dataclass
class AdapterIndex:
    """The adapters of several catalogs by name. The first catalog (in the order given, which
    the operator sorts by name) that has a name wins; later ones with the same name are
    shadowed."""

    catalogs: Sequence[CatalogRef]
    source: IndexSource
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS
    storage_refresh_seconds: float = STORAGE_REFRESH_SECONDS
    # False where nothing is downloaded (the ingress): no AdapterCatalog or Secret reads, so
    # that deployment needs no access to credentials.
    read_storage_options: bool = True
    _indexes: dict[str, CatalogIndex] = field(default_factory=dict)
    _merged: dict[str, tuple[AdapterRecord, CatalogStorage]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _first_refresh: asyncio.Event = field(default_factory=asyncio.Event)

    def lookup(self, name: str) -> tuple[AdapterRecord, CatalogStorage] | None:
        return self._merged.get(name)

    def records(self) -> list[AdapterRecord]:
        return [record for record, _ in self._merged.values()]

    @property
    def generation(self) -> str:
        """Changes whenever any catalog's index changed."""
        return "/".join(index.digest for index in self._indexes.values())

    async def refresh(self) -> bool:
        """Read every catalog's index; True when anything changed."""
        changed = False
        for catalog in self.catalogs:
            try:
                changed |= await self._refresh_catalog(catalog)
            except IndexFormatError as err:
                log.info("Kept the last index of catalog %s: %s", catalog.name, err)
            except Exception as err:  # noqa: BLE001 - API or mount faults: keep serving the last index
                log.warning("Could not read the index of catalog %s: %s", catalog.name, err)
        if changed:
            merged: dict[str, tuple[AdapterRecord, CatalogStorage]] = {}
            for catalog in self.catalogs:
                index = self._indexes.get(catalog.name)
                if index is None:
                    continue
                for name, record in index.records.items():
                    merged.setdefault(name, (record, index.storage))
            self._merged = merged
        self._first_refresh.set()
        return changed

    async def _refresh_catalog(self, catalog: CatalogRef) -> bool:
        text = await self.source.manifest_text(catalog)
        if text is None:
            return self._indexes.pop(catalog.name, None) is not None
        manifest = parse_manifest(text)
        current = self._indexes.get(catalog.name)
        if current is not None and current.digest == manifest.digest:
            stale = time.monotonic() - current.storage_read_at >= self.storage_refresh_seconds
            if not (stale and self.read_storage_options):
                return False
            # The AdapterCatalog's endpoint or its Secret may have changed (a rotated key).
            storage = await self._storage(catalog, manifest.uri)
            self._indexes[catalog.name] = replace(
                current, storage=storage, storage_read_at=time.monotonic()
            )
            return storage != current.storage
        shards = await self.source.shard_texts(catalog, [ref.name for ref in manifest.shards])
        records = read_index(text, shards)
        self._indexes[catalog.name] = CatalogIndex(
            catalog=catalog.name,
            digest=manifest.digest,
            storage=await self._storage(catalog, manifest.uri),
            records={record.name: record for record in records},
        )
        log.info(
            "Read the index of catalog %s: %d adapters (%d valid)",
            catalog.name,
            manifest.adapters,
            manifest.valid,
        )
        return True

    async def _storage(self, catalog: CatalogRef, uri: str) -> CatalogStorage:
        if not self.read_storage_options:
            return CatalogStorage(uri=uri)
        storage = await self.source.storage(catalog, uri)
        if storage.unavailable:
            log.warning("Catalog %s: %s", catalog.name, storage.unavailable.message)
        return storage

    def start(self) -> None:
        """Refresh now and then every ``refresh_seconds`` on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def wait_ready(self, seconds: float) -> None:
        if self._first_refresh.is_set():  # every request asks: no task for the common case
            return
        await asyncio.wait_for(self._first_refresh.wait(), seconds)

    async def _poll(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_seconds)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.source.close()


def open_index_source(index_dir: str | None) -> IndexSource:
    return DirectoryIndexSource(Path(index_dir)) if index_dir else KubernetesIndexSource()


def write_index_directory(
    root: Path, catalog: str, namespace: str, uri: str, records: Sequence[AdapterRecord]
) -> None:
    """Lay out ``records`` as DirectoryIndexSource reads them: shards first, the manifest
    last, each file replaced atomically, so a reader never sees a half-written index."""
    manifest, shards = build_index(catalog, namespace, uri, records)
    for name, text in shards.items():
        _write_atomically(root / name / SHARD_KEY, text)
    _write_atomically(root / manifest_name(catalog) / MANIFEST_KEY, manifest.to_json())


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


STORAGE_OPTIONS_FILE: Final = "storage.json"


def write_storage_options(
    root: Path, catalog: str, endpoint: str | None, region: str | None
) -> None:
    """Beside a directory index: the catalog's storage endpoint and region (a cluster reads
    them from the AdapterCatalog object instead)."""
    _write_atomically(
        root / manifest_name(catalog) / STORAGE_OPTIONS_FILE,
        json.dumps({"endpoint": endpoint, "region": region}),
    )
