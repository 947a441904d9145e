"""Names both sides spell: our API group, versions, kinds, plurals, labels, annotations, the
field manager, and the Serve application the runtime is deployed as.

One place: a handler, a builder, the runtime's index reader and a test never spell a label
two ways. Names only one side uses (KubeRay's kinds, Ray head ports) live with that side."""

from __future__ import annotations

from typing import Final

# ---------------------------------------------------------------- our API
API_GROUP: Final = "lorafleet.dev"
API_VERSION: Final = "v1alpha1"
API_GROUP_VERSION: Final = f"{API_GROUP}/{API_VERSION}"

LORAMODEL_KIND: Final = "LoRAModel"
LORAMODEL_PLURAL: Final = "loramodels"
ADAPTERCATALOG_KIND: Final = "AdapterCatalog"
ADAPTERCATALOG_PLURAL: Final = "adaptercatalogs"

# ---------------------------------------------------------------- labels and annotations
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"

LABEL_LORAMODEL: Final = f"{API_GROUP}/loramodel"
# On every ConfigMap of a catalog's index (see catalog_index).
LABEL_CATALOG: Final = f"{API_GROUP}/catalog"
LABEL_CATALOG_INDEX_PART: Final = f"{API_GROUP}/catalog-index"

APP_NAME: Final = "lorafleet"

# sha256 of the desired object the operator rendered: the RayService is written only when it
# changes, never by diffing against the live object (which carries API-server defaults).
ANNOTATION_SPEC_HASH: Final = f"{API_GROUP}/spec-hash"
# Set by `lorafleet` (or a user) on an AdapterCatalog to ask for an immediate sync.
ANNOTATION_SYNC_REQUESTED: Final = f"{API_GROUP}/sync-requested"
# The content digest of an index ConfigMap's data: unchanged shards are not written again.
ANNOTATION_INDEX_DIGEST: Final = f"{API_GROUP}/index-digest"
# Which validation settings produced a catalog's records.
ANNOTATION_VALIDATION_SETTINGS: Final = f"{API_GROUP}/validation-settings"

FIELD_MANAGER: Final = "lorafleet-operator"

# ---------------------------------------------------------------- the Serve application
SERVE_APPLICATION_NAME: Final = "lorafleet"
# What serveConfigV2 imports: the runtime's application builder.
RUNTIME_IMPORT_PATH: Final = "lorafleet_runtime.app:build_app"
