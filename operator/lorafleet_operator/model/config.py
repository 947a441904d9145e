"""Operator-wide settings, passed into builders (never read from the environment there)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lorafleet_operator.constants import DEFAULT_RUNTIME_IMAGE, RAY_VERSION


class OperatorConfig(BaseModel):
    """Defaults for what a LoRAModel leaves out, and operator behaviour.

    The CLI fills this from flags and environment variables; builders only receive it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_image: str = DEFAULT_RUNTIME_IMAGE
    # Must match the Ray inside the image: KubeRay uses it to pick version-specific behaviour.
    ray_version: str = RAY_VERSION
    # The head runs GCS, the dashboard and the Serve controller, but no replicas.
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    # Per worker pod, when spec.resources leaves cpu or memory out.
    worker_cpu: str = "8"
    worker_memory: str = "32Gi"
    # How long not-ready signals must persist before a Ready LoRAModel turns not Ready.
    debounce_seconds: float = Field(default=30.0, ge=0)
    # How often every LoRAModel is reconciled again even without an event (drift check).
    drift_check_seconds: float = Field(default=60.0, ge=1)
    # How often the catalog loop looks for catalogs whose syncInterval is up.
    catalog_tick_seconds: float = Field(default=2.0, gt=0)
    # Storage requests in flight per catalog sync (adapter_config.json reads).
    catalog_fetch_concurrency: int = Field(default=32, ge=1)
    # The kubeconfig to use (KUBECONFIG); None: ~/.kube/config if present, else in-cluster.
    kubeconfig: str | None = None
