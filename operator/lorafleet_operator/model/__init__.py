"""Pydantic models of what the operator reads: LoRAModel specs, catalog snapshots, its own
configuration. Pure: no I/O, no Kubernetes client."""

from __future__ import annotations

from lorafleet_operator.model.catalog import AdapterRank, CatalogSnapshot
from lorafleet_operator.model.config import OperatorConfig
from lorafleet_operator.model.loramodel import LoRAModel, LoRAModelSpec

__all__ = ["AdapterRank", "CatalogSnapshot", "LoRAModel", "LoRAModelSpec", "OperatorConfig"]
