"""A vLLM worker extension (engine argument ``worker_extension_cls``, vLLM's documented hook for
adding methods to its workers): lets a replica ask each worker which LoRA ids hold a GPU slot.

vLLM keeps registered adapters in host memory (its "CPU cache", up to ``max_cpu_loras``) and
copies them into one of ``max_loras`` slots when a batch uses them. Only the worker knows the
slots, so residency reports go through ``collective_rpc("lorafleet_lora_slots")``. The slot table
is an attribute of vLLM's LoRA model manager; when it is not there (another vLLM version) the
method answers None and the replica reports the split as unknown rather than guessing."""

from __future__ import annotations

from typing import Any

from lorafleet_runtime.engines.vllm.cpu_lora_fix import skip_lora_for_base_rows

# vLLM imports this module in its worker process, before the first forward pass.
skip_lora_for_base_rows()


class LoraSlotsExtension:
    def lorafleet_lora_slots(self) -> list[int] | None:
        runner: Any = getattr(self, "model_runner", None)
        worker_manager: Any = getattr(runner, "lora_manager", None)
        manager: Any = getattr(worker_manager, "_adapter_manager", None)
        slots = getattr(manager, "lora_index_to_id", None)
        if slots is None:
            return None if worker_manager is None or manager is None else []
        return sorted(int(lora_id) for lora_id in slots if lora_id)
