"""Which ``max_lora_rank`` the engine gets."""

from __future__ import annotations

from collections.abc import Iterable

from lorafleet_api.contract import SUPPORTED_MAX_LORA_RANKS, MaxLoraRank
from lorafleet_operator.constants import DEFAULT_MAX_LORA_RANK
from lorafleet_operator.model.catalog import CatalogSnapshot
from lorafleet_operator.model.loramodel import LoRAModelSpec


def smallest_supported_rank(at_least: int) -> MaxLoraRank:
    """The smallest rank vLLM accepts that is >= ``at_least``; the largest one when none is.

    vLLM reserves LoRA memory for ``max_lora_rank`` on every slot, so rounding up only as far
    as needed keeps memory for the KV cache. Adapters above the largest supported rank cannot
    be served at all and are reported incompatible."""
    for rank in SUPPORTED_MAX_LORA_RANKS:
        if rank >= at_least:
            return rank
    return SUPPORTED_MAX_LORA_RANKS[-1]


def effective_max_lora_rank(
    spec: LoRAModelSpec, snapshots: Iterable[CatalogSnapshot]
) -> MaxLoraRank:
    """``engine.maxLoraRank`` when set; else the smallest vLLM-supported rank that fits the
    largest valid adapter of the referenced catalogs; else vLLM's default (16).

    Only valid adapters count: one broken adapter with an absurd rank must not inflate the
    memory reserved for every slot."""
    if spec.engine.max_lora_rank is not None:
        return spec.engine.max_lora_rank
    referenced = {catalog.name for catalog in spec.catalogs}
    largest = max(
        (
            snapshot.largest_valid_rank
            for snapshot in snapshots
            if snapshot.found
            and snapshot.name in referenced
            and snapshot.largest_valid_rank is not None
        ),
        default=None,
    )
    if largest is None:
        return DEFAULT_MAX_LORA_RANK
    return smallest_supported_rank(largest)
