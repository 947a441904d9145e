"""The operator/runtime contract: what the operator writes into serveConfigV2 is exactly what
the runtime's build_app accepts, and nothing can drift silently."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from lorafleet_api.contract import RuntimeArgs
from lorafleet_operator.builders import render_rayservice, render_runtime_args
from lorafleet_operator.model import AdapterRank, CatalogSnapshot, LoRAModel, OperatorConfig

OBJ: dict[str, Any] = {
    "metadata": {"name": "support", "namespace": "demo", "uid": "u-1"},
    "spec": {
        "modelId": "support-llm",
        "baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"},
        "catalogs": [{"name": "support-adapters"}],
        "engine": {
            "maxLoras": 6,
            "maxCpuLoras": 24,
            "maxModelLen": 4096,
            "extraArgs": {"enforce_eager": True},
        },
        "replicas": {"min": 1, "max": 4, "targetOngoingRequests": 16},
        "resources": {"acceleratorType": "L4"},
        "router": {"maxReplicasPerAdapter": 2, "loadBoundFactor": 1.25},
    },
}
SNAPSHOTS = [
    CatalogSnapshot(
        name="support-adapters",
        namespace="demo",
        found=True,
        rank_histogram={8: 1, 32: 1},
        adapters=(AdapterRank(name="refunds", rank=8), AdapterRank(name="tone", rank=32)),
    )
]


def serve_args() -> dict[str, Any]:
    rayservice = render_rayservice(OBJ, SNAPSHOTS, OperatorConfig())
    (application,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    args: dict[str, Any] = application["args"]
    return args


def test_runtime_parses_exactly_what_the_operator_rendered() -> None:
    parsed = RuntimeArgs.from_serve_args(serve_args())
    assert parsed == render_runtime_args(LoRAModel.from_object(OBJ), SNAPSHOTS)
    assert parsed.to_serve_args() == serve_args()


def test_contract_carries_every_setting_the_runtime_needs() -> None:
    args = RuntimeArgs.from_serve_args(serve_args())
    assert args.model_id == "support-llm"
    assert args.model_source == "Qwen/Qwen2.5-7B-Instruct"
    assert [(c.name, c.namespace) for c in args.catalogs] == [("support-adapters", "demo")]
    assert args.engine.max_loras == 6
    assert args.engine.max_lora_rank == 32
    assert args.engine.max_cpu_loras == 24
    assert args.engine.extra_engine_kwargs == {"enforce_eager": True}
    assert (args.autoscaling_config.min_replicas, args.autoscaling_config.max_replicas) == (1, 4)
    assert args.autoscaling_config.target_ongoing_requests == 16
    assert args.accelerator_type == "L4"
    assert args.use_gpu is True
    assert args.router.max_replicas_per_adapter == 2
    assert args.router.load_bound_factor == 1.25


def test_adapters_themselves_never_reach_the_serve_config() -> None:
    text = yaml.safe_dump(serve_args())
    assert "refunds" not in text
    assert "tone" not in text


def test_runtime_refuses_arguments_it_does_not_know() -> None:
    args = serve_args()
    args["engine"]["max_lora"] = 4
    with pytest.raises(ValidationError, match="max_lora"):
        RuntimeArgs.from_serve_args(args)


def test_runtime_refuses_another_schema_version() -> None:
    args = serve_args()
    args["schema_version"] = 2
    with pytest.raises(ValidationError, match="schema_version"):
        RuntimeArgs.from_serve_args(args)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"max_cpu_loras": 2}, "max_cpu_loras"),
        ({"max_lora_rank": 24}, "max_lora_rank"),
        ({"extra_engine_kwargs": {"max_loras": 99}}, "may not set max_loras"),
    ],
)
def test_runtime_refuses_engine_settings_vllm_would_reject_later(
    change: dict[str, Any], problem: str
) -> None:
    args = serve_args()
    args["engine"].update(change)
    with pytest.raises(ValidationError, match=problem):
        RuntimeArgs.from_serve_args(args)


def test_contract_imports_without_ray_or_vllm() -> None:
    # The operator image has neither; importing the contract must not need them.
    probe = (
        "import sys, lorafleet_api.contract; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm', 'torch')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
