"""Operator-wide settings, passed into builders (never read from the environment there)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    # Where Prometheus scrapes /metrics (HOST:PORT); empty: no endpoint.
    metrics_address: str = ""

    @field_validator("metrics_address")
    @classmethod
    def _check_metrics_address(cls, value: str) -> str:
        if value:
            split_host_port(value)
        return value

    @property
    def metrics_endpoint(self) -> tuple[str, int] | None:
        """(host, port) of the metrics endpoint; None when there is none."""
        return split_host_port(self.metrics_address) if self.metrics_address else None


def split_host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port). An IPv6 host goes in brackets (``[::]:9090``); an empty
    host (``:9090``) means every IPv4 interface. Raises ValueError saying what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{address!r}: an IPv6 host goes in brackets, as in [::]:{port}")
    return host or "0.0.0.0", int(port)  # noqa: S104  (binding every interface is asked for)
