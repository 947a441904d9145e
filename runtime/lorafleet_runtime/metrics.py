"""Prometheus metrics of the runtime, exported through Ray's metrics agent (the ``metrics``
port of every Ray pod, which KubeRay exposes). Adapter labels are bounded: see labels.py."""

from __future__ import annotations

from typing import Any

from lorafleet_runtime.core.labels import OTHER, AdapterLabels

_PREFIX = "lorafleet_"


class RuntimeMetrics:
    """Created inside a replica (ray.util.metrics needs a running Ray worker)."""

    def __init__(self, labels: AdapterLabels | None = None) -> None:
        from ray.util import metrics

        self.labels = labels or AdapterLabels()
        tags = ("adapter",)
        self.requests: Any = metrics.Counter(
            _PREFIX + "requests", "Requests by adapter", tag_keys=tags
        )
        self.request_errors: Any = metrics.Counter(
            _PREFIX + "request_errors",
            "Requests answered with an error, by adapter and HTTP status",
            tag_keys=(*tags, "status"),
        )
        self.adapter_loads: Any = metrics.Counter(
            _PREFIX + "adapter_loads", "Adapters registered in the engine", tag_keys=tags
        )
        self.adapter_evictions: Any = metrics.Counter(
            _PREFIX + "adapter_evictions", "Adapters removed from the engine", tag_keys=tags
        )
        self.download_bytes: Any = metrics.Counter(
            _PREFIX + "adapter_download_bytes", "Bytes of adapter files downloaded", tag_keys=tags
        )
        self.download_failures: Any = metrics.Counter(
            _PREFIX + "adapter_download_failures",
            "Failed adapter downloads by reason",
            tag_keys=(*tags, "reason"),
        )
        buckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
        self.download_seconds: Any = metrics.Histogram(
            _PREFIX + "adapter_download_seconds",
            "Time to fetch an adapter to local disk (0 when cached)",
            boundaries=buckets,
            tag_keys=tags,
        )
        self.register_seconds: Any = metrics.Histogram(
            _PREFIX + "adapter_register_seconds",
            "Time for the engine to register a downloaded adapter",
            boundaries=buckets,
            tag_keys=tags,
        )

    def tags(self, adapter: str | None, *, known: bool = True, **extra: str) -> dict[str, str]:
        label = self.labels.label(adapter) if known else OTHER
        return {"adapter": label, **extra}


class BatchMetrics:
    """The PEFT engine's forward passes (engines/peft): how many rows and how many distinct
    adapters (the base model not counted) each one ran. Recorded from the engine's batcher
    thread."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.forward_passes: Any = metrics.Counter(
            _PREFIX + "batch_forward_passes", "Forward passes of the PEFT engine's batch"
        )
        self.adapters: Any = metrics.Histogram(
            _PREFIX + "batch_adapters_per_forward",
            "Distinct adapters mixed in one forward pass of the PEFT engine",
            boundaries=[0.5, 1.5, 2.5, 3.5, 4.5, 8.5, 16.5, 32.5, 64.5],
        )
        self.rows: Any = metrics.Histogram(
            _PREFIX + "batch_rows_per_forward",
            "Sequences (batch rows) in one forward pass of the PEFT engine",
            boundaries=[1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5, 128.5],
        )

    def record(self, rows: int, adapters: int) -> None:
        self.forward_passes.inc()
        self.adapters.observe(adapters)
        self.rows.observe(rows)


class RouterMetrics:
    """The request router's decisions (in the process that routes: each ingress replica).
    Labels are bounded: policy (3), tier (5), reason (7), adapter (top-K + other)."""

    def __init__(self, labels: AdapterLabels | None = None) -> None:
        from ray.util import metrics

        self.labels = labels or AdapterLabels()
        self.decisions: Any = metrics.Counter(
            _PREFIX + "router_decisions",
            "Routing decisions by policy, the adapter's tier on the chosen replica, and reason",
            tag_keys=("policy", "tier", "reason"),
        )
        self.hits: Any = metrics.Counter(
            _PREFIX + "router_hits",
            "Adapter requests routed to a replica holding the adapter (GPU slot or host memory)",
            tag_keys=("policy",),
        )
        self.misses: Any = metrics.Counter(
            _PREFIX + "router_misses",
            "Adapter requests routed to a replica that must load the adapter (or is loading it)",
            tag_keys=("policy",),
        )
        self.adapter_replicas: Any = metrics.Gauge(
            _PREFIX + "router_adapter_replicas",
            "Replicas holding or loading an adapter, as the router last saw them",
            tag_keys=("adapter",),
        )
