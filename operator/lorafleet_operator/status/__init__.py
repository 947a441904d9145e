"""Status computation: conditions and the LoRAModel and AdapterCatalog status from observed
objects, with the clock passed in. Pure: no I/O, no Kubernetes client."""

from __future__ import annotations

from lorafleet_operator.status.adaptercatalog import failed_status, rank_histogram, synced_status
from lorafleet_operator.status.conditions import find_condition, set_condition
from lorafleet_operator.status.loramodel import (
    ApplyFailure,
    compute_loramodel_status,
    count_adapters,
    invalid_spec_status,
    warnings_to_report,
)
from lorafleet_operator.status.rayservice import RayServiceHealth, assess_rayservice

__all__ = [
    "ApplyFailure",
    "RayServiceHealth",
    "assess_rayservice",
    "compute_loramodel_status",
    "count_adapters",
    "failed_status",
    "find_condition",
    "invalid_spec_status",
    "rank_histogram",
    "set_condition",
    "synced_status",
    "warnings_to_report",
]
