"""Pure constructors of what the operator writes: dicts in, dicts out. No clock, no
environment, no network; the same input always gives the same bytes."""

from __future__ import annotations

from lorafleet_operator.builders.catalog_index import (
    RenderedIndex,
    index_selector,
    render_index_configmaps,
)
from lorafleet_operator.builders.manifest import desired_state_hash, dump_manifest
from lorafleet_operator.builders.names import endpoint_url, rayservice_name, runtime_rbac_name
from lorafleet_operator.builders.ranks import effective_max_lora_rank
from lorafleet_operator.builders.rayservice import render_rayservice
from lorafleet_operator.builders.runtime_args import render_runtime_args
from lorafleet_operator.builders.runtime_rbac import (
    render_revoked_runtime_role,
    render_runtime_rbac,
    runtime_service_account,
)

__all__ = [
    "RenderedIndex",
    "desired_state_hash",
    "dump_manifest",
    "effective_max_lora_rank",
    "endpoint_url",
    "index_selector",
    "rayservice_name",
    "render_index_configmaps",
    "render_rayservice",
    "render_revoked_runtime_role",
    "render_runtime_args",
    "render_runtime_rbac",
    "runtime_rbac_name",
    "runtime_service_account",
]
