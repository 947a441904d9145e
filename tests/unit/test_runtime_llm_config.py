"""RuntimeArgs → Ray Serve LLM configuration: the invariants the operator promises."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from lorafleet_api.contract import RuntimeArgs
from lorafleet_runtime.engines.vllm.config import llm_config_dict, serving_args


def _args(**overrides: Any) -> RuntimeArgs:
    data: dict[str, Any] = {
        "model_id": "qwen",
        "model_source": "Qwen/Qwen2.5-0.5B-Instruct",
        "catalogs": [{"name": "c", "namespace": "ns"}],
        "engine": {
            "max_loras": 4,
            "max_lora_rank": 32,
            "max_cpu_loras": 8,
            "extra_engine_kwargs": {"enable_prefix_caching": True},
        },
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3},
        "use_gpu": True,
        "accelerator_type": "L4",
    }
    data.update(overrides)
    return RuntimeArgs.model_validate(data)


def test_max_loras_is_one_value_for_vllm_and_serve() -> None:
    config = llm_config_dict(_args())
    assert config["engine_kwargs"]["max_loras"] == 4
    assert config["lora_config"]["max_num_adapters_per_replica"] == 4
    assert config["engine_kwargs"]["enable_lora"] is True


def test_seed_compatible_fields_pass_through() -> None:
    config = llm_config_dict(_args())
    assert config["engine_kwargs"]["max_lora_rank"] == 32
    assert config["engine_kwargs"]["max_cpu_loras"] == 8
    assert config["engine_kwargs"]["enable_prefix_caching"] is True
    assert config["deployment_config"]["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 3,
    }
    assert config["accelerator_type"] == "L4"
    assert "placement_group_config" not in config


def test_workers_get_the_slot_reporting_extension_and_users_cannot_replace_it() -> None:
    config = llm_config_dict(_args())
    qualname = config["engine_kwargs"]["worker_extension_cls"]
    module, _, name = qualname.rpartition(".")
    assert getattr(importlib.import_module(module), name).lorafleet_lora_slots
    engine = {
        "max_loras": 4,
        "max_lora_rank": 16,
        "extra_engine_kwargs": {"worker_extension_cls": "my.Ext"},
    }
    with pytest.raises(ValueError, match="worker_extension_cls"):
        _args(engine=engine)


def test_no_bucket_path_adapters_come_from_the_catalogs() -> None:
    config = llm_config_dict(_args())
    assert "dynamic_lora_loading_path" not in config["lora_config"]
    assert config["server_cls"] == "lorafleet_runtime.engines.vllm.server:LoraFleetServer"
    assert config["experimental_configs"]["lorafleet_args"]["catalogs"] == [
        {"name": "c", "namespace": "ns"}
    ]


def test_cpu_engine_gets_one_cpu_bundle_and_file_sources_become_paths() -> None:
    config = llm_config_dict(_args(use_gpu=False, model_source="file:///models/tiny"))
    assert config["placement_group_config"] == {"bundles": [{"CPU": 1}]}
    assert config["model_loading_config"]["model_source"] == "/models/tiny"


def test_our_ingress_class_gets_the_same_args() -> None:
    args = _args()
    serving = serving_args(args)
    assert (
        serving["ingress_cls_config"]["ingress_cls"] == "lorafleet_runtime.ingress:LoraFleetIngress"
    )
    assert serving["ingress_cls_config"]["ingress_extra_kwargs"] == {
        "lorafleet_args": args.to_serve_args()
    }


def test_unset_runtime_knobs_stay_out_of_serve_config() -> None:
    rendered = _args().to_serve_args()
    for knob in ("catalog_index_dir", "adapter_cache_bytes", "failure_memory_s"):
        assert knob not in rendered
