"""The Serve application the operator's RayService imports (``serveConfigV2``, import path
``lorafleet_api.names.RUNTIME_IMPORT_PATH``), and `lorafleet serve` runs locally."""

from __future__ import annotations

from typing import Any

from lorafleet_api.contract import RuntimeArgs
from lorafleet_runtime.engines.vllm.config import serving_args


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application builder: ``args`` is the contract's ``to_serve_args()``."""
    from ray.serve.llm import build_openai_app

    runtime_args = RuntimeArgs.from_serve_args(args)
    return build_openai_app(serving_args(runtime_args))
