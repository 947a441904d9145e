"""The contract between the operator and the runtime: the arguments of the runtime's
application builder (``names.RUNTIME_IMPORT_PATH``).

The operator renders one ``RuntimeArgs`` into the RayService's ``serveConfigV2`` (as the
application's ``args``); the runtime parses the same model back. Both sides import this module,
so they cannot drift.

Adapters are deliberately absent: only the catalogs' names are here, so adding or removing an
adapter never changes ``serveConfigV2`` (a change there re-deploys the Serve application).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

SCHEMA_VERSION: Final = 1

# The ranks vLLM accepts for ``max_lora_rank``: ``MaxLoRARanks`` in vllm/config/lora.py.
# Any other value makes the engine refuse to start.
MaxLoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
SUPPORTED_MAX_LORA_RANKS: Final[tuple[MaxLoraRank, ...]] = get_args(MaxLoraRank)

# vLLM's ``ModelDType`` (vllm/config/model.py).
Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]

# vllm: Ray Serve LLM's LLMServer on vLLM; peft: transformers + PEFT with mixed-adapter batches.
EngineKind = Literal["vllm", "peft"]
ENGINE_KINDS: Final[tuple[EngineKind, ...]] = get_args(EngineKind)

# lorafleet: lorafleet's placement (the default); affinity: the seed's algorithm (holder, else a
# less busy replica, else power of two choices); ray: Ray Serve's own router.
RouterPolicy = Literal["lorafleet", "affinity", "ray"]
ROUTER_POLICIES: Final[tuple[RouterPolicy, ...]] = get_args(RouterPolicy)
# Values earlier versions accepted, and what they mean now.
DEPRECATED_ROUTER_POLICIES: Final[dict[str, RouterPolicy]] = {
    "adapter-affinity": "lorafleet",
    "ray-default": "ray",
}

# Engine arguments the runtime derives from typed fields. Letting the passthrough set them
# would break the invariants the operator promises (e.g. Ray Serve's
# max_num_adapters_per_replica == vLLM's max_loras).
MANAGED_ENGINE_KWARGS: Final[frozenset[str]] = frozenset(
    {
        "model",
        "served_model_name",
        "enable_lora",
        "max_loras",
        "max_lora_rank",
        "max_cpu_loras",
        "max_model_len",
        "tensor_parallel_size",
        "dtype",
        "gpu_memory_utilization",
        # The runtime's own worker extension (GPU-slot residency reports).
        "worker_extension_cls",
        # `vllm serve` server options: Ray Serve owns the HTTP endpoint (port 8000) and
        # lorafleet loads adapters from catalogs, never from a static list.
        "host",
        "port",
        "lora_modules",
    }
)


# What vLLM's engine arguments are called as keyword arguments (AsyncEngineArgs fields).
ENGINE_KWARG_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")


def engine_kwarg_name(key: str) -> str:
    """The engine argument a key means, however it is spelled: ``--max-loras``,
    ``--MAX_LORAS=4`` and ``max-loras`` all mean ``max_loras``."""
    return key.strip().lstrip("-").split("=", 1)[0].strip().lower().replace("-", "_")


def conflicting_engine_kwargs(keys: Iterable[str]) -> list[str]:
    """The keys (as written, sorted) that name an engine argument lorafleet sets itself, in
    any spelling (vLLM's CLI flags with dashes, ``=value`` or upper case count too)."""
    return sorted(key for key in keys if engine_kwarg_name(key) in MANAGED_ENGINE_KWARGS)


def malformed_engine_kwargs(keys: Iterable[str]) -> list[str]:
    """The keys (as written, sorted) that are not engine argument names (snake_case): vLLM
    would refuse them as unexpected keyword arguments when the replica starts."""
    return sorted(key for key in keys if not ENGINE_KWARG_NAME.fullmatch(key))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CatalogRef(_Frozen):
    """An AdapterCatalog the runtime reads its adapter index from."""

    name: str = Field(min_length=1)
    namespace: str = Field(min_length=1)


class EngineArgs(_Frozen):
    """Engine settings that the runtime passes on (plus LoRA serving settings)."""

    kind: EngineKind | None = Field(
        default=None,
        description=(
            "The engine; None means vllm. Written only for peft, so the serveConfigV2 of "
            "existing vLLM models is unchanged by this field (a change there redeploys)."
        ),
    )
    max_loras: int = Field(
        ge=1,
        description=(
            "Adapters resident on the GPU per replica. The runtime uses this ONE value for "
            "both vLLM's max_loras and Ray Serve's max_num_adapters_per_replica."
        ),
    )
    max_lora_rank: MaxLoraRank
    max_cpu_loras: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    dtype: Dtype = "auto"
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    extra_engine_kwargs: dict[str, JsonValue] = Field(default_factory=dict)

    @property
    def engine_kind(self) -> EngineKind:
        return self.kind or "vllm"

    @model_validator(mode="after")
    def _check_consistency(self) -> EngineArgs:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            # vLLM rejects this at engine start; fail where the config is written instead.
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
        managed = conflicting_engine_kwargs(self.extra_engine_kwargs)
        if managed:
            raise ValueError(
                f"extra_engine_kwargs may not set {', '.join(managed)}: "
                "lorafleet derives them from typed fields"
            )
        return self


class AutoscalingArgs(_Frozen):
    """Serve replica counts; names as in Ray Serve's ``autoscaling_config``."""

    min_replicas: int = Field(ge=0)
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> AutoscalingArgs:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        return self


class RouterArgs(_Frozen):
    """Request routing between replicas (``LoRAModel.spec.router``)."""

    policy: RouterPolicy = "lorafleet"
    max_replicas_per_adapter: int | None = Field(default=None, ge=1)
    load_bound_factor: float | None = Field(default=None, ge=1)

    @field_validator("policy", mode="before")
    @classmethod
    def _migrate_policy(cls, value: Any) -> Any:
        """Arguments an older operator rendered keep working under the new names."""
        return DEPRECATED_ROUTER_POLICIES.get(value, value) if isinstance(value, str) else value


class RuntimeArgs(_Frozen):
    """Keyword arguments of the runtime's application builder."""

    schema_version: Literal[1] = SCHEMA_VERSION
    model_id: str = Field(min_length=1, pattern=r"^[^:]+$")
    model_source: str = Field(min_length=1)
    catalogs: tuple[CatalogRef, ...] = ()
    engine: EngineArgs
    autoscaling_config: AutoscalingArgs
    use_gpu: bool = Field(
        description=(
            "Whether each engine replica reserves tensor_parallel_size GPUs (its placement "
            "group); False runs the engine on CPU (vLLM's CPU build)."
        ),
    )
    accelerator_type: str | None = None
    router: RouterArgs = RouterArgs()
    # Runtime knobs the operator does not set (unset ones are left out of serveConfigV2, so
    # adding them changed no rendered RayService). None means the runtime's default.
    catalog_index_dir: str | None = Field(
        default=None,
        description=(
            "Read the catalogs' index from this directory (one folder per index ConfigMap, "
            "as a ConfigMap volume lays it out) instead of the Kubernetes API; "
            "`lorafleet serve` uses it."
        ),
    )
    adapter_cache_bytes: int | None = Field(default=None, ge=1)
    adapter_download_timeout_s: float | None = Field(default=None, gt=0)
    failure_memory_s: float | None = Field(default=None, ge=0)

    def to_serve_args(self) -> dict[str, Any]:
        """The JSON-compatible dict that goes under ``args`` in ``serveConfigV2``.

        Unset optional fields are left out rather than written as null: a runtime image older
        than the operator then still accepts arguments it has never heard of, as long as they
        are unset (values inside ``extra_engine_kwargs`` are kept as written)."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def from_serve_args(cls, args: Mapping[str, Any]) -> RuntimeArgs:
        """Parse the ``args`` of the Serve application, as Ray Serve hands them over."""
        return cls.model_validate(dict(args))
