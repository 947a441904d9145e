"""The runtime's arguments for one LoRAModel: the ``args`` of its Serve application."""

from __future__ import annotations

from collections.abc import Iterable

from lorafleet_api.contract import (
    AutoscalingArgs,
    CatalogRef,
    EngineArgs,
    RouterArgs,
    RuntimeArgs,
)
from lorafleet_operator.builders.ranks import effective_max_lora_rank
from lorafleet_operator.model.catalog import CatalogSnapshot
from lorafleet_operator.model.loramodel import LoRAModel


def render_runtime_args(model: LoRAModel, snapshots: Iterable[CatalogSnapshot]) -> RuntimeArgs:
    """Fill the operator/runtime contract from a LoRAModel.

    Catalogs appear by name only (sorted, so reordering them in the spec changes nothing):
    adapters come and go without touching the Serve config. The snapshots matter only through
    the effective max LoRA rank."""
    spec = model.spec
    engine = spec.engine
    replicas = spec.replicas
    return RuntimeArgs(
        model_id=model.model_id,
        model_source=spec.base_model.source,
        catalogs=tuple(
            CatalogRef(name=name, namespace=model.namespace)
            for name in sorted(catalog.name for catalog in spec.catalogs)
        ),
        engine=EngineArgs(
            # Written only when not the default, so vLLM models' serveConfigV2 is unchanged.
            kind=None if engine.kind == "vllm" else engine.kind,
            max_loras=engine.max_loras,
            max_lora_rank=effective_max_lora_rank(spec, snapshots),
            max_cpu_loras=engine.max_cpu_loras,
            max_model_len=engine.max_model_len,
            tensor_parallel_size=engine.tensor_parallel_size,
            dtype=engine.dtype,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            extra_engine_kwargs=dict(engine.extra_args),
        ),
        autoscaling_config=AutoscalingArgs(
            min_replicas=replicas.min_replicas,
            max_replicas=replicas.effective_max,
            target_ongoing_requests=replicas.target_ongoing_requests,
        ),
        use_gpu=spec.accelerators_per_pod > 0,
        accelerator_type=spec.resources.accelerator_type,
        router=RouterArgs(
            # Deprecated names render as what they mean now: the same args as the new name.
            policy=spec.router.effective_policy,
            max_replicas_per_adapter=spec.router.max_replicas_per_adapter,
            load_bound_factor=spec.router.load_bound_factor,
        ),
    )
