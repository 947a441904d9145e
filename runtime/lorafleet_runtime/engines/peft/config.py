"""RuntimeArgs → the Ray Serve LLM application of the PEFT engine. Pure (no ray import).

Everything but the engine is the vLLM application's (``engines.vllm.config``): the ingress
and its arguments, the model id and source, Serve's adapter LRU (max_loras), autoscaling, the
request router and the RuntimeArgs the replica reads. What differs: the server class, and no
vLLM engine arguments or placement group (the replica itself holds the model: one CPU, or one
GPU with ``use_gpu``; see ``PeftServer.get_deployment_options``). vLLM-only fields of the
contract (gpu_memory_utilization, extra_engine_kwargs, max_cpu_loras, tensor_parallel_size) are
ignored; dtype and max_model_len are used."""

from __future__ import annotations

from typing import Any, Final

from lorafleet_api.contract import RuntimeArgs
from lorafleet_runtime.engines.vllm import config as vllm_config

SERVER_CLS: Final = "lorafleet_runtime.engines.peft.server:PeftServer"
# engine_kwargs the PEFT server does not read, which Ray Serve LLM's model card does
# (max_request_context_length).
_CARD_KWARGS: Final = ("max_model_len",)


def llm_config_dict(args: RuntimeArgs) -> dict[str, Any]:
    config = vllm_config.llm_config_dict(args)
    config["server_cls"] = SERVER_CLS
    config["engine_kwargs"] = {
        key: value for key, value in config["engine_kwargs"].items() if key in _CARD_KWARGS
    }
    config.pop("placement_group_config", None)
    return config


def serving_args(args: RuntimeArgs) -> dict[str, Any]:
    """The ``LLMServingArgs`` for ``build_openai_app``: lorafleet's ingress in front."""
    served = vllm_config.serving_args(args)
    served["llm_configs"] = [llm_config_dict(args)]
    return served
