"""Replica reports → the router's view, and the router configuration the runtime renders."""

from __future__ import annotations

from typing import Any

import pytest

from lorafleet_api.contract import RuntimeArgs
from lorafleet_runtime.engines.vllm.config import ROUTER_CLS, llm_config_dict
from lorafleet_runtime.router.policy import Tier
from lorafleet_runtime.router.residency import adapter_of, replica_state

pytestmark = pytest.mark.unit


def _state(mux: list[str], report: dict[str, Any] | None) -> Any:
    return replica_state(
        "r1",
        queue_len=3,
        multiplexed_model_ids=mux,
        routing_stats={"lorafleet": report} if report is not None else {},
        base_model_id="qwen",
        max_ongoing=1e9,
    )


def test_report_splits_serve_ids_into_gpu_host_memory_loading_and_disk() -> None:
    state = _state(
        ["qwen:a", "qwen:b", "qwen:c", "other:z"],
        {
            "gpu": ["a"],
            "cpu": ["b"],
            "engine": ["a", "b"],
            "disk": ["a", "b", "d"],
            "max_loras": 4,
            "evict_value": 2.5,
        },
    )
    assert state.tier("a") is Tier.GPU
    assert state.tier("b") is Tier.CPU
    assert state.tier("c") is Tier.LOADING  # Serve lists it, the report does not place it yet
    assert state.tier("d") is Tier.DISK
    assert state.tier("z") is Tier.REMOTE  # another base model's id is not ours
    assert (state.slots, state.evict_value, state.queue_len) == (4, 2.5, 3)


def test_an_adapter_evicted_since_the_report_is_not_resident() -> None:
    # Serve's ids are fresher (0.1 s) than the report: "a" left the engine since.
    state = _state(["qwen:b"], {"gpu": ["a", "b"], "cpu": [], "engine": ["a", "b"]})
    assert state.tier("a") is Tier.REMOTE
    assert state.tier("b") is Tier.GPU


def test_unknown_slot_table_counts_registered_adapters_as_resident() -> None:
    state = _state(["qwen:a"], {"gpu": None, "cpu": None, "engine": ["a"]})
    assert state.tier("a") is Tier.GPU


def test_no_report_yet_means_everything_serve_lists_is_loading() -> None:
    state = _state(["qwen:a"], None)
    assert state.tier("a") is Tier.LOADING


def test_adapter_of_splits_on_the_base_model_prefix_only() -> None:
    assert adapter_of("qwen:team/a:v2", "qwen") == "team/a:v2"
    assert adapter_of("qwen2:a", "qwen") is None


def _args(router: dict[str, Any] | None = None) -> RuntimeArgs:
    data: dict[str, Any] = {
        "model_id": "qwen",
        "model_source": "Qwen/Qwen2.5-0.5B-Instruct",
        "engine": {"max_loras": 4, "max_lora_rank": 16},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3},
        "use_gpu": True,
    }
    if router is not None:
        data["router"] = router
    return RuntimeArgs.model_validate(data)


def test_default_policy_is_lorafleets_router_with_its_knobs() -> None:
    config = llm_config_dict(_args({"load_bound_factor": 1.5, "max_replicas_per_adapter": 2}))
    router = config["deployment_config"]["request_router_config"]
    assert router["request_router_class"] == ROUTER_CLS
    assert router["request_router_kwargs"] == {
        "policy": "lorafleet",
        "base_model_id": "qwen",
        "load_bound_factor": 1.5,
        "max_replicas_per_adapter": 2,
    }
    assert router["request_routing_stats_period_s"] <= 5


def test_affinity_uses_lorafleets_router_class_with_the_seed_policy() -> None:
    router = llm_config_dict(_args({"policy": "affinity"}))["deployment_config"][
        "request_router_config"
    ]
    assert router["request_router_kwargs"]["policy"] == "affinity"


def test_ray_policy_leaves_ray_serves_own_router() -> None:
    config = llm_config_dict(_args({"policy": "ray"}))
    assert "request_router_config" not in config["deployment_config"]


@pytest.mark.parametrize(
    ("old", "new"), [("adapter-affinity", "lorafleet"), ("ray-default", "ray")]
)
def test_arguments_from_an_older_operator_keep_working(old: str, new: str) -> None:
    assert _args({"policy": old}).router.policy == new
