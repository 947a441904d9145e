"""The status of an AdapterCatalog. Pure: the sync's results and ``now`` come in.

Conditions:
- ``Ready``: the last sync succeeded and the index is current (reason ``Synced``); after a
  failed sync False with the failure's reason (``StorageUnreachable``, ``AccessDenied``,
  ``NotFound``, ``InvalidSpec``) while counts, adapters and the index keep the last good sync.
- ``Synced``: the index reflects the current spec (generation). False after a failure.

Status stays small whatever the catalog's size: counts (with ``counts.servable``, the valid
adapters each engine kind can serve), a rank histogram of the adapters vLLM can serve (the
engine with a rank limit), and the first ``MAX_LISTED`` valid and invalid adapters; a listed
valid adapter some engine refuses names it with the reason (``refusedBy``). The full list is
in the index ConfigMaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from lorafleet_api.adapter_support import engine_refusal, servable_counts, vllm_rank_histogram
from lorafleet_api.catalog_index import AdapterRecord, IndexManifest
from lorafleet_api.contract import ENGINE_KINDS
from lorafleet_operator.status.conditions import bounded, format_time, set_condition

READY: Final = "Ready"
SYNCED: Final = "Synced"
MAX_LISTED: Final = 50
MAX_INVALID_MESSAGE: Final = 256


def rank_histogram(records: Sequence[AdapterRecord]) -> dict[str, int]:
    """Adapters vLLM can serve per rank as status holds it: keys are strings (JSON object
    keys), in rank order."""
    return {str(rank): count for rank, count in vllm_rank_histogram(records).items()}


def listed_adapter(record: AdapterRecord) -> dict[str, Any]:
    """A valid adapter as ``status.adapters`` lists it; ``refusedBy`` maps each engine kind
    that cannot serve it to the reason, and is left out when every engine can."""
    entry: dict[str, Any] = {"name": record.name, "rank": record.rank, "revision": record.revision}
    refused = {
        kind: refusal[0]
        for kind in ENGINE_KINDS
        if (refusal := engine_refusal(record, kind)) is not None
    }
    if refused:
        entry["refusedBy"] = refused
    return entry


def synced_status(
    *,
    generation: int,
    uri: str,
    records: Sequence[AdapterRecord],
    stray_files: int,
    excluded: int,
    manifest: IndexManifest,
    manifest_configmap: str,
    previous_status: Mapping[str, Any] | None,
    now: datetime,
    duration_seconds: float,
) -> dict[str, Any]:
    """Status after a successful sync; ``records`` sorted by name."""
    previous = previous_status or {}
    valid = [record for record in records if record.valid]
    invalid = [record for record in records if not record.valid]
    message = (
        f"Synced {len(records)} adapters from {uri}: {len(valid)} valid, {len(invalid)} invalid"
    )
    conditions = previous.get("conditions")
    for condition_type in (READY, SYNCED):
        conditions = set_condition(
            conditions,
            condition_type=condition_type,
            status="True",
            reason="Synced",
            message=message,
            observed_generation=generation,
            now=now,
        )
    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "counts": {
            "found": len(records),
            "valid": len(valid),
            "invalid": len(invalid),
            "excluded": excluded,
            "strayFiles": stray_files,
            "servable": servable_counts(valid),
        },
        "rankHistogram": rank_histogram(records),
        "adapters": [listed_adapter(r) for r in valid[:MAX_LISTED]],
        "invalidAdapters": [
            {
                "name": r.name,
                "reason": r.reason or "Invalid",
                "message": bounded(r.message or "", MAX_INVALID_MESSAGE),
            }
            for r in invalid[:MAX_LISTED]
        ],
        "lastSyncTime": format_time(now),
        "lastSyncDurationSeconds": round(duration_seconds, 3),
        "index": {
            "configMap": manifest_configmap,
            "shards": len(manifest.shards),
            "digest": manifest.digest,
        },
    }


def failed_status(
    *,
    generation: int,
    reason: str,
    message: str,
    previous_status: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """Status after a failed sync: everything from the last good sync stays (the index too)."""
    previous = dict(previous_status or {})
    conditions = previous.get("conditions")
    for condition_type in (READY, SYNCED):
        conditions = set_condition(
            conditions,
            condition_type=condition_type,
            status="False",
            reason=reason,
            message=message,
            observed_generation=generation,
            now=now,
        )
    return {**previous, "observedGeneration": generation, "conditions": conditions}
