"""The LoRAModel resource as the operator reads it.

Field names and defaults mirror crds/lorafleet.dev_loramodels.yaml: a spec read from a file
(``lorafleet render``) must render exactly like the same spec read back from the API server
with its schema defaults applied. The validators repeat the CRD's CEL rules for the same
reason; the messages say the same thing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from lorafleet_api.contract import (
    DEPRECATED_ROUTER_POLICIES,
    ROUTER_POLICIES,
    Dtype,
    EngineKind,
    MaxLoraRank,
    RouterPolicy,
    conflicting_engine_kwargs,
    engine_kwarg_name,
    malformed_engine_kwargs,
)
from lorafleet_api.naming import is_dns1035_label
from lorafleet_operator.constants import MAX_LORAMODEL_NAME_LENGTH
from lorafleet_operator.errors import InvalidSpecError

DNS1123_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
# A model id clients put in `model="<modelId>:<adapter>"`: the colon separates the adapter.
MODEL_ID: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")
# A Hugging Face repo id (`org/name` or `name`), or a bucket / mounted-volume URI.
BASE_MODEL_SOURCE: Final = re.compile(
    r"^(([A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*"
    r"|(s3|gs)://[a-z0-9][a-z0-9._-]*(/.*)?"
    r"|file:///.+)$"
)
# Kubernetes resource.Quantity, as the core API's OpenAPI schema writes it.
QUANTITY: Final = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# KubeRay turns only these container resources into Ray GPUs (IsGPUResourceKey): names
# ending in "gpu", and NVIDIA MIG slices.
MIG_RESOURCE_NAME: Final = re.compile(r"^nvidia[.]com/mig-[0-9]+g[.][0-9]+gb$")
# A container image reference (github.com/distribution/reference's grammar, as the CRD's CEL
# rule writes it): the first component is a registry only with a '.', a port or as localhost.
IMAGE_REFERENCE: Final = re.compile(
    r"^((localhost|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+)"
    r"(:[0-9]+)?/|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?:[0-9]+/)?"
    r"[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)*"
    r"(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?"
    r"(@[a-zA-Z][a-zA-Z0-9]*([-_+.][a-zA-Z][a-zA-Z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
IMAGE_MESSAGE: Final = (
    "image must be a container image reference like "
    "registry.example.com/team/lorafleet-runtime:1.2.3: no spaces or scheme, a lower-case "
    "repository path, then an optional non-empty ':tag' and/or '@sha256:<digest>'"
)
# The CRD's bounds on engine and replica counts (values beyond them are typos: no replica
# holds 100000 LoRA slots).
MAX_MAX_LORAS: Final = 256
MAX_MAX_CPU_LORAS: Final = 4096
MIN_MAX_MODEL_LEN: Final = 16
MAX_MAX_MODEL_LEN: Final = 16 * 1024 * 1024
MAX_TENSOR_PARALLEL_SIZE: Final = 64
MAX_REPLICAS: Final = 1024
# The typed engine field that sets each managed engine argument, for the refusal message.
_TYPED_FIELD_OF_KWARG: Final = {
    "max_loras": "engine.maxLoras",
    "max_lora_rank": "engine.maxLoraRank",
    "max_cpu_loras": "engine.maxCpuLoras",
    "max_model_len": "engine.maxModelLen",
    "tensor_parallel_size": "engine.tensorParallelSize",
    "dtype": "engine.dtype",
    "gpu_memory_utilization": "engine.gpuMemoryUtilization",
    "model": "baseModel.source",
    "served_model_name": "modelId",
    "host": "Ray Serve (its HTTP proxy)",
    "port": "Ray Serve (its HTTP proxy, port 8000)",
    "lora_modules": "spec.catalogs",
}

UpgradeType = Literal["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]

# What spec.router.policy accepts: the contract's policies and, deprecated, the names earlier
# versions used (kept so existing manifests still apply; DEPRECATED_ROUTER_POLICIES says what
# each means now). A unit test keeps this, the contract and the CRD's enum in step.
RouterPolicySpelling = Literal[RouterPolicy, "adapter-affinity", "ray-default"]
_POLICY_OF_SPELLING: Final[dict[str, RouterPolicy]] = {
    **{policy: policy for policy in ROUTER_POLICIES},
    **DEPRECATED_ROUTER_POLICIES,
}
# The router knobs only the lorafleet policy reads, as users write them, and the policies
# that ignore them (the CRD refuses the knobs with these).
LORAFLEET_POLICY_KNOBS: Final = ("maxReplicasPerAdapter", "loadBoundFactor")
POLICIES_IGNORING_KNOBS: Final[tuple[RouterPolicy, ...]] = ("affinity", "ray")
MAX_LOAD_BOUND_FACTOR: Final = 10
# The CRD's default before the rename: the API server stored it in every object created
# without a policy, so those objects carry a deprecated name their authors never wrote.
OLD_DEFAULT_ROUTER_POLICY: Final = "adapter-affinity"
DEPRECATED_ROUTER_POLICY: Final = "DeprecatedRouterPolicy"


def lorafleet_only_message(knob: str) -> str:
    """Why a lorafleet-only knob is refused with another policy (the CRD's CEL message)."""
    return (
        f"router.{knob} applies to policy lorafleet only (affinity and ray ignore it): "
        "remove it or set policy: lorafleet"
    )


@dataclass(frozen=True)
class SpecWarning:
    """Something in a valid spec the user should change: the reason is one CamelCase word
    (the Event's reason), the message says what to write instead."""

    reason: str
    message: str


class _Spec(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
    )


def _quantity(value: str | int | None) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not QUANTITY.fullmatch(text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 8, 500m, 32Gi)")
    return text


class BaseModelSpec(_Spec):
    source: str = Field(max_length=1024)

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if not BASE_MODEL_SOURCE.fullmatch(value):
            raise ValueError(
                "baseModel.source must be a Hugging Face repo id (org/name) "
                "or an s3://, gs:// or file:/// URI"
            )
        return value


class CatalogReference(_Spec):
    name: str = Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN.pattern)


class EngineSpec(_Spec):
    kind: EngineKind = "vllm"
    max_loras: int = Field(default=4, ge=1, le=MAX_MAX_LORAS)
    max_lora_rank: MaxLoraRank | None = None
    max_cpu_loras: int | None = Field(default=None, ge=1, le=MAX_MAX_CPU_LORAS)
    max_model_len: int | None = Field(default=None, ge=MIN_MAX_MODEL_LEN, le=MAX_MAX_MODEL_LEN)
    tensor_parallel_size: int = Field(default=1, ge=1, le=MAX_TENSOR_PARALLEL_SIZE)
    dtype: Dtype = "auto"
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    extra_args: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> EngineSpec:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError("engine.maxCpuLoras must be greater than or equal to engine.maxLoras")
        managed = conflicting_engine_kwargs(self.extra_args)
        if managed:
            raise ValueError(
                f"engine.extraArgs may not set {', '.join(managed)}: lorafleet sets "
                f"{', '.join(_managed_by(key) for key in managed)}; remove "
                f"{'it' if len(managed) == 1 else 'them'} from engine.extraArgs"
            )
        malformed = malformed_engine_kwargs(self.extra_args)
        if malformed:
            raise ValueError(
                f"engine.extraArgs keys must be vLLM engine argument names in snake_case, not "
                f"command-line flags: write {', '.join(_suggest(key) for key in malformed)}"
            )
        if self.kind == "peft":
            # The CRD's CEL messages, word for word (`lorafleet render` reads files unchecked).
            if "extra_args" in self.model_fields_set:
                raise ValueError(
                    "engine.extraArgs are vLLM engine arguments; remove them for engine.kind peft"
                )
            if self.max_cpu_loras is not None or self.gpu_memory_utilization is not None:
                raise ValueError(
                    "engine.maxCpuLoras and engine.gpuMemoryUtilization are vLLM settings; "
                    "remove them for engine.kind peft"
                )
            if self.tensor_parallel_size != 1:
                raise ValueError(
                    "engine.kind peft runs each replica on one device: "
                    "engine.tensorParallelSize must be 1"
                )
        return self


def _managed_by(key: str) -> str:
    name = engine_kwarg_name(key)
    field = _TYPED_FIELD_OF_KWARG.get(name)
    return f"{name} from {field}" if field else f"{name} itself"


def _suggest(key: str) -> str:
    """``--enforce-eager`` as the user should write it (``enforce_eager``), the value apart."""
    name = engine_kwarg_name(key)
    return f"{key!r} as {name!r}" if name else f"{key!r} as a snake_case name"


class ReplicasSpec(_Spec):
    min_replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS, alias="min")
    max_replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS, alias="max")
    target_ongoing_requests: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ReplicasSpec:
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("replicas.min must be less than or equal to replicas.max")
        if self.effective_max < 1:
            raise ValueError(
                "replicas.max must be at least 1; set replicas.max when replicas.min is 0"
            )
        return self

    @property
    def effective_max(self) -> int:
        """``max`` defaults to ``min``: a fixed number of replicas."""
        return self.min_replicas if self.max_replicas is None else self.max_replicas


class AcceleratorSpec(_Spec):
    resource_name: str = Field(default="nvidia.com/gpu", max_length=253)
    count: int | None = Field(default=None, ge=0)

    @field_validator("resource_name")
    @classmethod
    def _check_resource_name(cls, value: str) -> str:
        if not (value.endswith("gpu") or MIG_RESOURCE_NAME.fullmatch(value)):
            raise ValueError(
                "resources.accelerator.resourceName must be a GPU resource that KubeRay passes "
                "to Ray: a name ending in 'gpu' (nvidia.com/gpu, amd.com/gpu) or an NVIDIA MIG "
                "slice (nvidia.com/mig-1g.10gb)"
            )
        return value


class ResourcesSpec(_Spec):
    accelerator: AcceleratorSpec = AcceleratorSpec()
    accelerator_type: str | None = Field(default=None, max_length=63)
    cpu: str | None = None
    memory: str | None = None

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _check_quantity(cls, value: str | int | None) -> str | None:
        return _quantity(value)


class RouterSpec(_Spec):
    policy: RouterPolicySpelling = "lorafleet"
    max_replicas_per_adapter: int | None = Field(default=None, ge=1)
    load_bound_factor: float | None = Field(default=None, ge=1, le=MAX_LOAD_BOUND_FACTOR)

    @model_validator(mode="after")
    def _check(self) -> RouterSpec:
        # Only the new names are refused: a deprecated one with knobs is an existing manifest
        # that applied before, and stays accepted (deprecation_warning says what to change).
        if self.policy in POLICIES_IGNORING_KNOBS:
            problems = [lorafleet_only_message(knob) for knob in self.knobs_set]
            if problems:
                raise ValueError("; ".join(problems))
        return self

    @property
    def effective_policy(self) -> RouterPolicy:
        """The policy the runtime runs: deprecated names mapped to what they mean now."""
        return _POLICY_OF_SPELLING[self.policy]

    @property
    def knobs_set(self) -> tuple[str, ...]:
        """The lorafleet-only knobs this spec sets, as users write them."""
        values = (self.max_replicas_per_adapter, self.load_bound_factor)
        return tuple(
            knob
            for knob, value in zip(LORAFLEET_POLICY_KNOBS, values, strict=True)
            if value is not None
        )

    def deprecation_warning(self) -> SpecWarning | None:
        """What to tell the user whose spec names the policy by a deprecated name."""
        if self.policy not in DEPRECATED_ROUTER_POLICIES:
            return None
        policy = self.effective_policy
        message = (
            f'spec.router.policy "{self.policy}" is deprecated: it now means "{policy}"; '
            f"write policy: {policy}"
        )
        ignored = self.knobs_set if policy in POLICIES_IGNORING_KNOBS else ()
        if ignored:
            pronoun = "it" if len(ignored) == 1 else "them"
            message += f" and remove {' and '.join(ignored)} (policy {policy} ignores {pronoun})"
        if self.policy == OLD_DEFAULT_ROUTER_POLICY:
            message += (
                f" ({self.policy} was the default: objects created without a policy store it too)"
            )
        return SpecWarning(DEPRECATED_ROUTER_POLICY, message)


class ClusterUpgradeOptions(_Spec):
    gateway_class_name: str = Field(min_length=1, max_length=253)
    step_size_percent: int = Field(ge=0, le=100)
    interval_seconds: int = Field(ge=1)
    max_surge_percent: int = Field(default=100, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> ClusterUpgradeOptions:
        if self.step_size_percent > self.max_surge_percent:
            raise ValueError(
                "upgradeStrategy.clusterUpgradeOptions.stepSizePercent must be less than or "
                "equal to maxSurgePercent"
            )
        return self


class UpgradeStrategySpec(_Spec):
    upgrade_type: UpgradeType = Field(default="NewCluster", alias="type")
    cluster_upgrade_options: ClusterUpgradeOptions | None = None

    @model_validator(mode="after")
    def _check(self) -> UpgradeStrategySpec:
        incremental = self.upgrade_type == "NewClusterWithIncrementalUpgrade"
        if incremental and self.cluster_upgrade_options is None:
            raise ValueError(
                "upgradeStrategy.clusterUpgradeOptions is required when type is "
                "NewClusterWithIncrementalUpgrade"
            )
        if not incremental and self.cluster_upgrade_options is not None:
            raise ValueError(
                "upgradeStrategy.clusterUpgradeOptions is only allowed when type is "
                "NewClusterWithIncrementalUpgrade"
            )
        return self


class KeySelector(_Spec):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)
    optional: bool | None = None


class EnvVarSource(_Spec):
    secret_key_ref: KeySelector | None = None
    config_map_key_ref: KeySelector | None = None

    @model_validator(mode="after")
    def _check(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("env valueFrom must set exactly one of secretKeyRef, configMapKeyRef")
        return self


class EnvVar(_Spec):
    name: str = Field(min_length=1, max_length=253)
    value: str | None = None
    value_from: EnvVarSource | None = None

    @model_validator(mode="after")
    def _check(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("env: set value or valueFrom, not both")
        return self


class Toleration(_Spec):
    key: str | None = Field(default=None, max_length=317)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not set a value")
        return self


class LoRAModelSpec(_Spec):
    model_id: str | None = Field(default=None, max_length=128)
    base_model: BaseModelSpec
    catalogs: tuple[CatalogReference, ...] = ()
    engine: EngineSpec = EngineSpec()
    replicas: ReplicasSpec = ReplicasSpec()
    resources: ResourcesSpec = ResourcesSpec()
    router: RouterSpec = RouterSpec()
    image: str | None = Field(default=None, min_length=1, max_length=512)
    upgrade_strategy: UpgradeStrategySpec = UpgradeStrategySpec()
    service_account_name: str | None = Field(default=None, min_length=1, max_length=253)
    env: tuple[EnvVar, ...] = ()
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()

    @field_validator("image")
    @classmethod
    def _check_image(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_REFERENCE.fullmatch(value):
            raise ValueError(IMAGE_MESSAGE)
        return value

    @field_validator("model_id")
    @classmethod
    def _check_model_id(cls, value: str | None) -> str | None:
        if value is not None and not MODEL_ID.fullmatch(value):
            raise ValueError(
                "modelId may contain letters, digits, '.', '_', '-' and '/', must start and end "
                "with a letter or digit, and must not contain ':' (it separates the adapter)"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> LoRAModelSpec:
        names = [catalog.name for catalog in self.catalogs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"catalogs lists {', '.join(duplicates)} more than once")
        count = self.resources.accelerator.count
        tp = self.engine.tensor_parallel_size
        if count is not None and count % tp != 0:
            raise ValueError(
                "resources.accelerator.count must be a multiple of engine.tensorParallelSize: "
                "each engine replica uses tensorParallelSize accelerators of one pod "
                f"(count {count}, tensorParallelSize {tp})"
            )
        return self

    @property
    def accelerators_per_pod(self) -> int:
        """GPUs of one worker pod: ``resources.accelerator.count``, default one replica's."""
        count = self.resources.accelerator.count
        return self.engine.tensor_parallel_size if count is None else count

    def warnings(self) -> tuple[SpecWarning, ...]:
        """What the user should change in this valid spec (deprecated names), in field order."""
        router = self.router.deprecation_warning()
        return () if router is None else (router,)


class LoRAModel(BaseModel):
    """A LoRAModel object: the metadata the builders need, and the parsed spec."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    namespace: str
    uid: str | None = None
    generation: int | None = None
    spec: LoRAModelSpec

    @property
    def model_id(self) -> str:
        """What clients put in ``model=``: ``spec.modelId``, else the object's name."""
        return self.spec.model_id or self.name

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> LoRAModel:
        """Parse a LoRAModel as read from the API server or a file.

        A missing namespace means ``default``, as with kubectl outside any context.
        Raises InvalidSpecError with every problem found, named by its field path."""
        metadata = obj.get("metadata") or {}
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidSpecError("metadata.name is required")
        if len(name) > MAX_LORAMODEL_NAME_LENGTH or not is_dns1035_label(name):
            raise InvalidSpecError(
                f"metadata.name {name!r} must be a DNS-1035 label of at most "
                f"{MAX_LORAMODEL_NAME_LENGTH} characters (lower-case letters, digits and '-', "
                "starting with a letter): it names the serve Service"
            )
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            raise InvalidSpecError("spec is required")
        try:
            parsed = LoRAModelSpec.model_validate(spec)
        except ValidationError as error:
            raise InvalidSpecError(_describe(error)) from error
        return cls(
            name=name,
            namespace=metadata.get("namespace") or "default",
            uid=metadata.get("uid"),
            generation=metadata.get("generation"),
            spec=parsed,
        )


def _describe(error: ValidationError) -> str:
    """One line per problem, each starting with the field path as users write it."""
    lines = []
    for problem in error.errors(include_url=False):
        path = ".".join(str(part) for part in ("spec", *problem["loc"]))
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "; ".join(lines)
