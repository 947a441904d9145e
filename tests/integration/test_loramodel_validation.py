"""Bad LoRAModels are refused by the real API server (CRD schema and CEL rules) with a
message that names the field and says what is wrong, before the operator ever sees them; every
router policy, old names included, is accepted."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from lorafleet_testbed.controlplane import ControlPlane

VALID: dict[str, Any] = {
    "apiVersion": "lorafleet.dev/v1alpha1",
    "kind": "LoRAModel",
    "metadata": {"name": "m", "namespace": "default"},
    "spec": {"baseModel": {"source": "Qwen/Qwen2.5-0.5B-Instruct"}},
}

Mutation = Callable[[dict[str, Any]], None]


def _spec(key: str, value: Any) -> Mutation:
    return lambda obj: obj["spec"].__setitem__(key, value)


def _name(value: str) -> Mutation:
    return lambda obj: obj["metadata"].__setitem__("name", value)


DNS_1035 = "metadata.name must be a DNS-1035 label of at most 63 characters"
CASES: list[tuple[str, Mutation, str]] = [
    ("missing base model", lambda o: o["spec"].pop("baseModel"), "spec.baseModel: Required value"),
    ("missing source", _spec("baseModel", {}), "spec.baseModel.source: Required value"),
    (
        "unsupported source scheme",
        lambda o: o["spec"]["baseModel"].__setitem__("source", "ftp://models/qwen"),
        "baseModel.source must be a Hugging Face repo id (org/name) or an s3://, gs:// or file:///",
    ),
    (
        "zero maxLoras",
        _spec("engine", {"maxLoras": 0}),
        "spec.engine.maxLoras in body should be greater than or equal to 1",
    ),
    (
        "min above max",
        _spec("replicas", {"min": 3, "max": 2}),
        "replicas.min must be less than or equal to replicas.max",
    ),
    (
        "negative replicas",
        _spec("replicas", {"min": -1, "max": 2}),
        "spec.replicas.min in body should be greater than or equal to 0",
    ),
    (
        "no replica at all",
        _spec("replicas", {"min": 0, "max": 0}),
        "replicas.max must be at least 1",
    ),
    ("unknown field", _spec("maxAdapters", 3), 'unknown field "spec.maxAdapters"'),
    (
        "wrong type",
        _spec("engine", {"maxLoras": "four"}),
        "spec.engine.maxLoras in body must be of type integer",
    ),
    ("name too long for the Service", _name("m" * 64), DNS_1035),
    ("dotted name", _name("qwen.v2"), DNS_1035),
    (
        "rank vLLM does not support",
        _spec("engine", {"maxLoraRank": 24}),
        'spec.engine.maxLoraRank: Unsupported value: 24: supported values: "1", "8", "16"',
    ),
    ("colon in modelId", _spec("modelId", "qwen:7b"), "must not contain ':'"),
    (
        "unknown dtype",
        _spec("engine", {"dtype": "int4"}),
        'spec.engine.dtype: Unsupported value: "int4"',
    ),
    (
        "CPU cache smaller than GPU slots",
        _spec("engine", {"maxLoras": 8, "maxCpuLoras": 4}),
        "engine.maxCpuLoras must be greater than or equal to engine.maxLoras",
    ),
    (
        "GPUs not a multiple of tensor parallelism",
        lambda o: o["spec"].update(
            {"engine": {"tensorParallelSize": 4}, "resources": {"accelerator": {"count": 6}}}
        ),
        "resources.accelerator.count must be a multiple of engine.tensorParallelSize",
    ),
    (
        "unknown router policy",
        _spec("router", {"policy": "random"}),
        'spec.router.policy: Unsupported value: "random": supported values: "lorafleet", '
        '"affinity", "ray", "adapter-affinity", "ray-default"',
    ),
    (
        "load bound below 1",
        _spec("router", {"loadBoundFactor": 0.5}),
        "spec.router.loadBoundFactor in body should be greater than or equal to 1",
    ),
    (
        "load bound above 10",
        _spec("router", {"loadBoundFactor": 12}),
        "spec.router.loadBoundFactor in body should be less than or equal to 10",
    ),
    (
        "replicas per adapter with policy ray",
        _spec("router", {"policy": "ray", "maxReplicasPerAdapter": 2}),
        "spec.router: Invalid value: router.maxReplicasPerAdapter applies to policy "
        "lorafleet only (affinity and ray ignore it): remove it or set policy: lorafleet",
    ),
    (
        "load bound with policy affinity",
        _spec("router", {"policy": "affinity", "loadBoundFactor": 1.5}),
        "spec.router: Invalid value: router.loadBoundFactor applies to policy "
        "lorafleet only (affinity and ray ignore it): remove it or set policy: lorafleet",
    ),
    ("catalog without a name", _spec("catalogs", [{}]), "spec.catalogs[0].name: Required value"),
    (
        "unknown engine",
        _spec("engine", {"kind": "tgi"}),
        'spec.engine.kind: Unsupported value: "tgi": supported values: "vllm", "peft"',
    ),
    (
        "vLLM arguments for the peft engine",
        _spec("engine", {"kind": "peft", "extraArgs": {"enforce_eager": True}}),
        "engine.extraArgs are vLLM engine arguments; remove them for engine.kind peft",
    ),
    (
        "vLLM memory settings for the peft engine",
        _spec("engine", {"kind": "peft", "gpuMemoryUtilization": 0.5}),
        "engine.maxCpuLoras and engine.gpuMemoryUtilization are vLLM settings",
    ),
    (
        "tensor parallelism for the peft engine",
        _spec("engine", {"kind": "peft", "tensorParallelSize": 2}),
        "engine.kind peft runs each replica on one device: engine.tensorParallelSize must be 1",
    ),
]


def _create(plane: ControlPlane, obj: dict[str, Any]) -> tuple[int, str]:
    result = plane.kubectl(
        "create", "--dry-run=server", "-f", "-", input_text=json.dumps(obj), check=False
    )
    return result.returncode, result.stderr


def test_the_valid_base_is_accepted(control_plane: ControlPlane) -> None:
    assert _create(control_plane, VALID) == (0, "")


def test_without_a_router_the_policy_defaults_to_lorafleet(control_plane: ControlPlane) -> None:
    result = control_plane.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input_text=json.dumps(VALID)
    )
    assert json.loads(result.stdout)["spec"]["router"] == {"policy": "lorafleet"}


ACCEPTED_ROUTERS: list[tuple[str, dict[str, Any]]] = [
    ("lorafleet", {"policy": "lorafleet"}),
    ("affinity", {"policy": "affinity"}),
    ("ray", {"policy": "ray"}),
    (
        "lorafleet with its knobs",
        {"policy": "lorafleet", "maxReplicasPerAdapter": 2, "loadBoundFactor": 10},
    ),
    # Deprecated names: existing manifests still apply (the operator warns).
    ("adapter-affinity", {"policy": "adapter-affinity"}),
    ("ray-default", {"policy": "ray-default"}),
    ("adapter-affinity with knobs", {"policy": "adapter-affinity", "maxReplicasPerAdapter": 2}),
    # Accepted before the rename (the knobs were ignored), so still accepted.
    ("ray-default with knobs", {"policy": "ray-default", "loadBoundFactor": 1.5}),
]


@pytest.mark.parametrize(
    "router", [r for _, r in ACCEPTED_ROUTERS], ids=[name for name, _ in ACCEPTED_ROUTERS]
)
def test_router_policies_old_and_new_are_accepted(
    control_plane: ControlPlane, router: dict[str, Any]
) -> None:
    obj = copy.deepcopy(VALID)
    obj["spec"]["router"] = router
    assert _create(control_plane, obj) == (0, "")


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, e) for _, m, e in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_loramodel_is_rejected_with_a_clear_message(
    control_plane: ControlPlane, mutate: Mutation, message: str
) -> None:
    obj = copy.deepcopy(VALID)
    mutate(obj)
    code, stderr = _create(control_plane, obj)
    assert code != 0
    assert message in stderr
