"""What replicas tell the router and the client about adapter residency. Pure.

- A replica's routing stats (``record_routing_stats()["lorafleet"]``, see the vLLM engine's
  ``residency()``) become a ``ReplicaState`` for the policy.
- Each response starts, inside Serve, with a ``TierMarker``: where the request's adapter was on
  the replica when the request arrived. The ingress drops it and sends it to the client as the
  ``x-lorafleet-adapter-tier`` header (gpu, cpu, disk, remote; base for the base model)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from lorafleet_runtime.router.policy import ReplicaState

TIER_HEADER: Final = "x-lorafleet-adapter-tier"
STATS_KEY: Final = "lorafleet"


@dataclass(frozen=True, slots=True)
class TierMarker:
    tier: str


def adapter_of(model_id: str, base_model_id: str) -> str | None:
    """The adapter in a multiplexed model id ``<base>:<adapter>`` (None for another base)."""
    prefix = base_model_id + ":"
    return model_id[len(prefix) :] if model_id.startswith(prefix) else None


def replica_state(
    replica_id: str,
    *,
    queue_len: float,
    multiplexed_model_ids: Iterable[str],
    routing_stats: Mapping[str, Any] | None,
    base_model_id: str,
    max_ongoing: float,
) -> ReplicaState:
    """The policy's view of one replica.

    Serve's ``multiplexed_model_ids`` (pushed by the replica every 0.1 s) hold what is loaded
    or being loaded; the residency report (every routing-stats period) splits them into GPU
    slot and host memory and adds the disk cache. An id Serve lists that the report does not
    yet place is being loaded (or was loaded since the last report: the policy prices both as
    a load under way, cheaper than any load it would start)."""
    report = (routing_stats or {}).get(STATS_KEY) or {}
    multiplexed = {
        name
        for name in (adapter_of(m, base_model_id) for m in multiplexed_model_ids)
        if name is not None
    }
    gpu_known = report.get("gpu")
    cpu_known = report.get("cpu")
    engine = set(report.get("engine") or ())
    if gpu_known is None:
        # The slot table is unknown (another vLLM version): everything registered counts as
        # resident.
        gpu = engine & multiplexed
        cpu: set[str] = set()
    else:
        gpu = set(gpu_known) & multiplexed
        cpu = set(cpu_known or ()) & multiplexed
    loading = multiplexed - gpu - cpu
    slots = int(report.get("max_loras") or max(1, len(multiplexed)))
    return ReplicaState(
        id=replica_id,
        queue_len=queue_len,
        gpu=frozenset(gpu),
        cpu=frozenset(cpu),
        disk=frozenset(report.get("disk") or ()),
        loading=frozenset(loading),
        slots=slots,
        max_ongoing=max_ongoing,
        evict_value=float(report.get("evict_value") or 0.0),
    )
