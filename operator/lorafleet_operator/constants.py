"""Names shared by the operator's layers: API group, kinds, labels, annotations, ports.

One place, so that a handler, a builder and a test never spell a label two ways."""

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

# ---------------------------------------------------------------- KubeRay
RAY_API_GROUP: Final = "ray.io"
RAY_API_VERSION: Final = "v1"
RAY_API_GROUP_VERSION: Final = f"{RAY_API_GROUP}/{RAY_API_VERSION}"
RAYSERVICE_KIND: Final = "RayService"
RAYSERVICE_PLURAL: Final = "rayservices"

# KubeRay (>= 1.4) rejects longer RayService names after accepting the object: it appends
# suffixes to build RayCluster names (MaxRayServiceNameLength in ray-operator utils).
MAX_RAYSERVICE_NAME_LENGTH: Final = 47
# The serve Service is named after the LoRAModel, so the LoRAModel name is a DNS-1035 label.
MAX_LORAMODEL_NAME_LENGTH: Final = 63

# ---------------------------------------------------------------- labels and annotations
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_LORAMODEL: Final = f"{API_GROUP}/loramodel"

APP_NAME: Final = "lorafleet"
COMPONENT_LLM_SERVER: Final = "llm-server"

# sha256 of the desired object we rendered: the RayService is written only when it changes,
# never by diffing against the live object (which carries API-server defaults).
ANNOTATION_SPEC_HASH: Final = f"{API_GROUP}/spec-hash"
# Set by `lorafleet` (or a user) on an AdapterCatalog to ask for an immediate sync.
ANNOTATION_SYNC_REQUESTED: Final = f"{API_GROUP}/sync-requested"

FIELD_MANAGER: Final = "lorafleet-operator"

# ---------------------------------------------------------------- Ray cluster
# Ports on the Ray head container, named as KubeRay expects them (utils/constant.go).
PORT_GCS_SERVER: Final = 6379
PORT_DASHBOARD: Final = 8265
PORT_CLIENT: Final = 10001
PORT_SERVE: Final = 8000
PORT_METRICS: Final = 8080
HEAD_PORTS: Final[tuple[tuple[str, int], ...]] = (
    ("gcs-server", PORT_GCS_SERVER),
    ("dashboard", PORT_DASHBOARD),
    ("client", PORT_CLIENT),
    ("serve", PORT_SERVE),
    ("metrics", PORT_METRICS),
)
SERVE_PORT_NAME: Final = "serve"

HEAD_CONTAINER_NAME: Final = "ray-head"
WORKER_CONTAINER_NAME: Final = "ray-worker"
WORKER_GROUP_NAME: Final = "llm"

RAY_VERSION: Final = "2.60.0"

# ---------------------------------------------------------------- runtime
SERVE_APPLICATION_NAME: Final = "lorafleet"
RUNTIME_IMPORT_PATH: Final = "lorafleet_runtime.app:build_app"
# Bumped together with the package version by the release; a unit test keeps them in step.
DEFAULT_RUNTIME_IMAGE: Final = "ghcr.io/lorafleet/runtime:0.1.0"

# vLLM's own default when nothing says otherwise (LoRAConfig.max_lora_rank).
DEFAULT_MAX_LORA_RANK: Final = 16
