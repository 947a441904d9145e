"""Which engine can serve which valid adapter. Pure: the operator counts with it (catalog and
LoRAModel status), the runtime admits requests with it; one copy of the rules for both.

A catalog marks an adapter invalid only for what no engine can serve (broken files, not LoRA,
another base model, …). What the index records about a valid adapter (``modulesToSave``,
``variant``, ``rankPattern``: see ``catalog_index``) is judged here, per engine:

- vllm refuses ``modules_to_save`` (``ModulesToSave``: vLLM's LoRA layers add low-rank deltas,
  they cannot swap whole modules), DoRA and rank/alpha patterns (``UnsupportedOption``: one
  rank and one scaling per adapter).
- peft refuses DoRA (``UnsupportedOption``): it batches requests for different adapters in
  one forward pass (``adapter_names=``), and PEFT 0.21 refuses that for DoRA adapters
  (``peft/tuners/lora/layer.py``, ``LoraLayer._check_forward_args``: "Cannot pass
  `adapter_names` when DoRA is enabled.").

vLLM's rank limit (``max_lora_rank``) is a setting of one deployment, not of the engine: the
runtime's admission and the LoRAModel status check it where the setting is known.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Final

from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.contract import ENGINE_KINDS, EngineKind

VARIANT_DORA: Final = "dora"

MODULES_TO_SAVE: Final = "ModulesToSave"
UNSUPPORTED_OPTION: Final = "UnsupportedOption"

# The reasons an engine refuses a valid adapter with (one CamelCase word each).
REFUSAL_REASONS: Final[dict[str, str]] = {
    MODULES_TO_SAVE: "modules_to_save is set; vLLM cannot serve such adapters",
    UNSUPPORTED_OPTION: "an option the engine cannot serve (DoRA; for vLLM also rank patterns)",
}


def _variant_option(variant: str) -> str:
    return "use_dora" if variant == VARIANT_DORA else f"LoRA variant {variant!r}"


def _variant_name(variant: str) -> str:
    return "DoRA" if variant == VARIANT_DORA else f"the LoRA variant {variant!r}"


def engine_refusal(record: AdapterRecord, kind: EngineKind) -> tuple[str, str] | None:
    """``(reason, message)`` when an engine of ``kind`` cannot serve the valid adapter
    ``record``; None when it can. Checks run in a fixed order and the first refusal decides.

    Whether the record is valid at all is the caller's first question: an invalid record
    is served by no engine, whatever this says."""
    if kind == "vllm":
        if record.modules_to_save:
            return (
                MODULES_TO_SAVE,
                f"modules_to_save={list(record.modules_to_save)!r}: vLLM cannot serve adapters "
                "that replace whole modules",
            )
        if record.variant is not None:
            return (
                UNSUPPORTED_OPTION,
                f"{_variant_option(record.variant)} is set; vLLM cannot serve "
                f"{_variant_name(record.variant)}",
            )
        if record.rank_pattern:
            return (
                UNSUPPORTED_OPTION,
                "rank_pattern/alpha_pattern is set; vLLM serves one rank per adapter",
            )
        return None
    # peft: any LoRA variant (DoRA is the one PEFT 0.21 knows) needs its own forward path,
    # and mixed-adapter batches refuse it (see the module docstring).
    if record.variant is not None:
        return (
            UNSUPPORTED_OPTION,
            f"{_variant_option(record.variant)} is set; PEFT cannot run "
            f"{_variant_name(record.variant)} in mixed-adapter batches",
        )
    return None


def serves(kind: EngineKind, record: AdapterRecord) -> bool:
    """Whether an engine of ``kind`` can serve ``record`` (rank limits aside)."""
    return record.valid and engine_refusal(record, kind) is None


def servable_counts(records: Iterable[AdapterRecord]) -> dict[EngineKind, int]:
    """Adapters each engine can serve (rank limits aside), every engine kind present."""
    counts = dict.fromkeys(ENGINE_KINDS, 0)
    for record in records:
        for kind in ENGINE_KINDS:
            counts[kind] += serves(kind, record)
    return counts


def vllm_rank_histogram(records: Iterable[AdapterRecord]) -> dict[int, int]:
    """Adapters vLLM can serve per LoRA rank, in rank order. vLLM is the engine with a rank
    limit, so this is what its ``max_lora_rank`` is derived from and checked against; an
    adapter vLLM refuses must not inflate the memory reserved for every slot."""
    counts = Counter(record.rank for record in records if record.rank and serves("vllm", record))
    return {rank: counts[rank] for rank in sorted(counts)}
