"""RuntimeArgs → the dicts Ray Serve LLM's builders take. Pure (no ray import), so the
mapping is unit-tested; ``lorafleet_runtime.app`` hands the result to Ray."""

from __future__ import annotations

from typing import Any, Final

from lorafleet_api.contract import RuntimeArgs

SERVER_CLS: Final = "lorafleet_runtime.engines.vllm.server:LoraFleetServer"
INGRESS_CLS: Final = "lorafleet_runtime.ingress:LoraFleetIngress"
# vLLM resolves this by qualified name inside its workers (dots, not a colon).
WORKER_EXTENSION_CLS: Final = "lorafleet_runtime.engines.vllm.worker.LoraSlotsExtension"
# Where the replica finds its RuntimeArgs: LLMConfig.experimental_configs is Ray Serve LLM's
# free-form dict that reaches the server class unchanged.
EXPERIMENTAL_KEY: Final = "lorafleet_args"
ROUTER_CLS: Final = "lorafleet_runtime.router.serve:LoraFleetRequestRouter"
# How often each replica's residency report reaches the routers (Ray's default is 10 s; the
# adapters loaded or loading reach them every 0.1 s regardless).
ROUTING_STATS_PERIOD_S: Final = 2.0
ROUTING_STATS_TIMEOUT_S: Final = 5.0


def request_router_config(args: RuntimeArgs) -> dict[str, Any] | None:
    """The LLM deployment's ``request_router_config``: lorafleet's router with the LoRAModel's
    policy and knobs, or None for ``ray`` (Ray Serve's own router, untouched)."""
    router = args.router
    if router.policy == "ray":
        return None
    kwargs: dict[str, Any] = {"policy": router.policy, "base_model_id": args.model_id}
    if router.load_bound_factor is not None:
        kwargs["load_bound_factor"] = router.load_bound_factor
    if router.max_replicas_per_adapter is not None:
        kwargs["max_replicas_per_adapter"] = router.max_replicas_per_adapter
    return {
        "request_router_class": ROUTER_CLS,
        "request_router_kwargs": kwargs,
        "request_routing_stats_period_s": ROUTING_STATS_PERIOD_S,
        "request_routing_stats_timeout_s": ROUTING_STATS_TIMEOUT_S,
    }


def engine_kwargs(args: RuntimeArgs) -> dict[str, Any]:
    """vLLM engine arguments: the passthrough first, then the typed fields (the contract
    refuses passthrough keys that would override them)."""
    engine = args.engine
    kwargs: dict[str, Any] = dict(engine.extra_engine_kwargs)
    kwargs.update(
        worker_extension_cls=WORKER_EXTENSION_CLS,
        enable_lora=True,
        max_loras=engine.max_loras,
        max_lora_rank=engine.max_lora_rank,
        tensor_parallel_size=engine.tensor_parallel_size,
        dtype=engine.dtype,
    )
    # vLLM keeps at least max_loras adapters in host memory; without a value it uses that.
    if engine.max_cpu_loras is not None:
        kwargs["max_cpu_loras"] = engine.max_cpu_loras
    if engine.max_model_len is not None:
        kwargs["max_model_len"] = engine.max_model_len
    if engine.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    return kwargs


def engine_model_source(source: str) -> str:
    """What Ray Serve LLM loads: ``file:///path`` (a mounted volume, as the LoRAModel says it)
    becomes the plain path it expects; Hugging Face ids and bucket URIs pass unchanged."""
    return source[len("file://") :] if source.startswith("file://") else source


def llm_config_dict(args: RuntimeArgs) -> dict[str, Any]:
    """The ``LLMConfig`` of the one base model."""
    autoscaling: dict[str, Any] = {
        "min_replicas": args.autoscaling_config.min_replicas,
        "max_replicas": args.autoscaling_config.max_replicas,
    }
    if args.autoscaling_config.target_ongoing_requests is not None:
        autoscaling["target_ongoing_requests"] = args.autoscaling_config.target_ongoing_requests
    deployment_config: dict[str, Any] = {"autoscaling_config": autoscaling}
    router_config = request_router_config(args)
    if router_config is not None:
        deployment_config["request_router_config"] = router_config
    config: dict[str, Any] = {
        "model_loading_config": {
            "model_id": args.model_id,
            "model_source": engine_model_source(args.model_source),
        },
        "engine_kwargs": engine_kwargs(args),
        # No dynamic_lora_loading_path: adapters come from the catalogs, through our server.
        # The ONE value: Serve's per-replica adapter LRU is vLLM's max_loras.
        "lora_config": {"max_num_adapters_per_replica": args.engine.max_loras},
        "deployment_config": deployment_config,
        "server_cls": SERVER_CLS,
        "experimental_configs": {EXPERIMENTAL_KEY: args.to_serve_args()},
    }
    if args.accelerator_type:
        config["accelerator_type"] = args.accelerator_type
    if not args.use_gpu:
        # vLLM's CPU build: one CPU bundle instead of tensor_parallel_size GPUs.
        config["placement_group_config"] = {"bundles": [{"CPU": 1}]}
    return config


def serving_args(args: RuntimeArgs) -> dict[str, Any]:
    """The ``LLMServingArgs`` for ``build_openai_app``: our LLMConfig and our ingress class."""
    return {
        "llm_configs": [llm_config_dict(args)],
        "ingress_cls_config": {
            "ingress_cls": INGRESS_CLS,
            "ingress_extra_kwargs": {"lorafleet_args": args.to_serve_args()},
        },
    }
