"""Which max_lora_rank the engine gets. Too small and adapters fail at load time (vLLM's
default 16 is the classic trap); too large and every adapter slot wastes GPU memory."""

from __future__ import annotations

from typing import Any

import pytest

from lorafleet_operator.builders import effective_max_lora_rank
from lorafleet_operator.model import CatalogSnapshot, LoRAModelSpec


def spec(**engine: Any) -> LoRAModelSpec:
    return LoRAModelSpec.model_validate(
        {
            "baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"},
            "catalogs": [{"name": "a"}, {"name": "b"}],
            "engine": engine,
        }
    )


def catalog(name: str, ranks: dict[int, int], *, found: bool = True) -> CatalogSnapshot:
    return CatalogSnapshot(name=name, namespace="demo", found=found, rank_histogram=ranks)


@pytest.mark.parametrize(
    ("largest", "expected"),
    [(1, 1), (4, 8), (8, 8), (12, 16), (16, 16), (33, 64), (300, 320), (512, 512)],
)
def test_default_is_the_smallest_vllm_rank_that_fits_the_largest_adapter(
    largest: int, expected: int
) -> None:
    snapshots = [catalog("a", {1: 3, largest: 1}), catalog("b", {1: 2})]
    assert effective_max_lora_rank(spec(), snapshots) == expected


def test_largest_adapter_across_all_referenced_catalogs_counts() -> None:
    snapshots = [catalog("a", {8: 10}), catalog("b", {64: 1})]
    assert effective_max_lora_rank(spec(), snapshots) == 64


def test_adapters_above_vllms_largest_rank_leave_it_at_the_largest() -> None:
    assert effective_max_lora_rank(spec(), [catalog("a", {1024: 1})]) == 512


def test_explicit_rank_wins_even_when_adapters_need_more() -> None:
    assert effective_max_lora_rank(spec(maxLoraRank=16), [catalog("a", {64: 5})]) == 16


def test_without_adapters_the_engine_gets_vllms_default() -> None:
    assert effective_max_lora_rank(spec(), []) == 16
    assert effective_max_lora_rank(spec(), [catalog("a", {}), catalog("b", {8: 0})]) == 16


def test_missing_and_unreferenced_catalogs_do_not_count() -> None:
    snapshots = [
        catalog("a", {128: 1}, found=False),
        catalog("unrelated", {256: 1}),
        catalog("b", {32: 1}),
    ]
    assert effective_max_lora_rank(spec(), snapshots) == 32
