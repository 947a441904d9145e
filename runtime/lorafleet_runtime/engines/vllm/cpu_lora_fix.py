"""Base-model rows must get no LoRA on vLLM's CPU build (a workaround, applied in vLLM's worker
process when it imports lorafleet's worker extension).

vLLM marks tokens of requests without an adapter with LoRA index -1. Its GPU kernels skip them;
the PyTorch ops that the CPU platform uses index the stacked adapter weights with it, and
``weights[-1]`` is the last slot: in a batch that mixes base-model and adapter requests, base
requests silently answer with whichever adapter sits in the last slot (seen under load:
tests/runtime/test_load.py). Upstream fix, not yet released:
https://github.com/vllm-project/vllm/pull/48421.

Every LoRA delta starts with a shrink (inputs x A); zeroing the shrink output of index -1 rows
makes their delta zero in every expand that follows. Rows with an adapter are unchanged."""

from __future__ import annotations

from typing import Any

_PATCHED = "_lorafleet_skips_base_rows"


def _skipping_base_rows(shrink: Any) -> Any:
    def bgmv_shrink(
        inputs: Any,
        lora_b_weights: Any,
        output_tensor: Any,
        lora_indices_tensor: Any,
        scaling: float = 1.0,
    ) -> None:
        base = lora_indices_tensor < 0
        shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor.clamp(min=0), scaling)
        if bool(base.any()):
            output_tensor[base] = 0

    setattr(bgmv_shrink, _PATCHED, True)
    return bgmv_shrink


def skip_lora_for_base_rows() -> None:
    """Patch vLLM's PyTorch LoRA shrink (where the CPU punica wrapper and the ``sgmv`` prefill
    op look it up); a no-op when already patched or when vLLM has no such op."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:
        return
    if getattr(lora_ops.bgmv_shrink, _PATCHED, False):
        return
    patched = _skipping_base_rows(lora_ops.bgmv_shrink)
    lora_ops.bgmv_shrink = patched
    setattr(punica_cpu, "bgmv_shrink", patched)  # noqa: B010 (imported by name, not exported)
