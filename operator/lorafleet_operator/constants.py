"""Names only the operator uses: KubeRay's kinds, the Ray cluster it renders, defaults.

What the runtime spells too (our API group, kinds, labels, annotations, the Serve application)
is in ``lorafleet_api.names``: one place, so a label is never spelled two ways."""

from __future__ import annotations

from typing import Final

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

# ---------------------------------------------------------------- labels
COMPONENT_LLM_SERVER: Final = "llm-server"
COMPONENT_CATALOG_INDEX: Final = "catalog-index"

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
# Bumped together with the package version by the release; a unit test keeps them in step.
DEFAULT_RUNTIME_IMAGE: Final = "ghcr.io/lorafleet/runtime:0.1.0"

# vLLM's own default when nothing says otherwise (LoRAConfig.max_lora_rank).
DEFAULT_MAX_LORA_RANK: Final = 16
