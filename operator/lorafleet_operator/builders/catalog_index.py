"""The ConfigMaps that hold an AdapterCatalog's full index (format:
``lorafleet_api.catalog_index``). Pure: records in, ConfigMap dicts out, byte-stable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lorafleet_api.catalog_index import (
    MANIFEST_KEY,
    PART_MANIFEST,
    PART_SHARD,
    SHARD_KEY,
    AdapterRecord,
    IndexManifest,
    build_index,
    manifest_name,
)
from lorafleet_api.names import (
    ADAPTERCATALOG_KIND,
    ANNOTATION_INDEX_DIGEST,
    ANNOTATION_VALIDATION_SETTINGS,
    APP_NAME,
    FIELD_MANAGER,
    LABEL_CATALOG,
    LABEL_CATALOG_INDEX_PART,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
)
from lorafleet_operator.builders.manifest import owner_reference
from lorafleet_operator.constants import COMPONENT_CATALOG_INDEX
from lorafleet_operator.model.adaptercatalog import AdapterCatalog


@dataclass(frozen=True)
class RenderedIndex:
    manifest: IndexManifest
    manifest_configmap: dict[str, Any]
    shard_configmaps: list[dict[str, Any]]  # in shard order

    @property
    def names(self) -> list[str]:
        return [self.manifest_configmap["metadata"]["name"]] + [
            cm["metadata"]["name"] for cm in self.shard_configmaps
        ]


def index_selector(catalog: str) -> str:
    """Label selector of every ConfigMap of ``catalog``'s index."""
    return f"{LABEL_CATALOG}={catalog}"


def _configmap(
    catalog: AdapterCatalog, name: str, part: str, key: str, text: str, digest: str
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": catalog.namespace,
        "labels": {
            LABEL_NAME: APP_NAME,
            LABEL_INSTANCE: catalog.name,
            LABEL_COMPONENT: COMPONENT_CATALOG_INDEX,
            LABEL_PART_OF: APP_NAME,
            LABEL_MANAGED_BY: FIELD_MANAGER,
            LABEL_CATALOG: catalog.name,
            LABEL_CATALOG_INDEX_PART: part,
        },
        "annotations": {ANNOTATION_INDEX_DIGEST: digest},
    }
    if catalog.uid:
        # The catalog owns its index: deleting it garbage-collects every ConfigMap. No
        # blockOwnerDeletion: nothing needs the index once the catalog is gone.
        metadata["ownerReferences"] = [
            owner_reference(
                ADAPTERCATALOG_KIND, catalog.name, catalog.uid, block_owner_deletion=False
            )
        ]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {key: text}}


def render_index_configmaps(
    catalog: AdapterCatalog, records: Sequence[AdapterRecord], validation_settings: str
) -> RenderedIndex:
    """The manifest ConfigMap and one ConfigMap per shard for ``records``."""
    uri = catalog.spec.source.location.uri
    manifest, shard_texts = build_index(catalog.name, catalog.namespace, uri, records)
    shards = [
        _configmap(catalog, ref.name, PART_SHARD, SHARD_KEY, shard_texts[ref.name], ref.digest)
        for ref in manifest.shards
    ]
    manifest_cm = _configmap(
        catalog,
        manifest_name(catalog.name),
        PART_MANIFEST,
        MANIFEST_KEY,
        manifest.to_json(),
        manifest.digest,
    )
    manifest_cm["metadata"]["annotations"][ANNOTATION_VALIDATION_SETTINGS] = validation_settings
    return RenderedIndex(manifest=manifest, manifest_configmap=manifest_cm, shard_configmaps=shards)
