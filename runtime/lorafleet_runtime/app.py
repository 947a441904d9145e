"""``lorafleet_runtime.app:build_app``: the Serve application the operator's RayService
imports (``serveConfigV2``), and `lorafleet serve` runs locally."""

from __future__ import annotations

from typing import Any

from lorafleet_runtime.contract import RuntimeArgs
from lorafleet_runtime.llm_config import serving_args


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve application builder: ``args`` is the contract's ``to_serve_args()``."""
    from ray.serve.llm import build_openai_app

    runtime_args = RuntimeArgs.from_serve_args(args)
    return build_openai_app(serving_args(runtime_args))
