"""The Serve application the operator's RayService imports (``serveConfigV2``, import path
``lorafleet_api.names.RUNTIME_IMPORT_PATH``), and `lorafleet serve` runs locally.

``engine.kind`` picks the engine behind lorafleet's ingress: ``vllm`` (the default; Ray Serve
LLM's vLLM server) or ``peft`` (transformers + PEFT, ``engines/peft``). Both are Ray Serve LLM
applications (``build_openai_app``) with the same ingress, router and adapter path."""

from __future__ import annotations

from typing import Any

from lorafleet_api.contract import RuntimeArgs
from lorafleet_runtime.engines.peft import config as peft_config
from lorafleet_runtime.engines.vllm import config as vllm_config


def serving_args(runtime_args: RuntimeArgs) -> dict[str, Any]:
    """The ``LLMServingArgs`` of the engine ``runtime_args`` names."""
    if runtime_args.engine.engine_kind == "peft":
        return peft_config.serving_args(runtime_args)
    return vllm_config.serving_args(runtime_args)


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application builder: ``args`` is the contract's ``to_serve_args()``."""
    from ray.serve.llm import build_openai_app

    return build_openai_app(serving_args(RuntimeArgs.from_serve_args(args)))
