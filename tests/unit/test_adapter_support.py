"""Which engine serves which valid adapter: one set of rules for the catalog status, the
LoRAModel status and the runtime's admission."""

from __future__ import annotations

import pytest

from lorafleet_api.adapter_support import (
    REFUSAL_REASONS,
    engine_refusal,
    servable_counts,
    vllm_rank_histogram,
)
from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.contract import ENGINE_KINDS, EngineKind


def _record(name: str = "a", **fields: object) -> AdapterRecord:
    data: dict[str, object] = {"name": name, "uri": f"s3://b/{name}/", "revision": "r"}
    data.update({"valid": True, "rank": 8, **fields})
    return AdapterRecord.model_validate(data)


CASES: list[tuple[str, dict[str, object], dict[EngineKind, str | None]]] = [
    ("plain LoRA", {}, {"vllm": None, "peft": None}),
    (
        "modules_to_save",
        {"modulesToSave": ["lm_head"]},
        {"vllm": "ModulesToSave", "peft": None},
    ),
    ("DoRA", {"variant": "dora"}, {"vllm": "UnsupportedOption", "peft": "UnsupportedOption"}),
    ("rank pattern", {"rankPattern": True}, {"vllm": "UnsupportedOption", "peft": None}),
    (
        "modules_to_save and DoRA",
        {"modulesToSave": ["lm_head"], "variant": "dora"},
        {"vllm": "ModulesToSave", "peft": "UnsupportedOption"},
    ),
    (
        "a variant this release does not know",
        {"variant": "future"},
        {"vllm": "UnsupportedOption", "peft": "UnsupportedOption"},
    ),
]


@pytest.mark.parametrize(("case", "fields", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_engine_refuses_what_it_cannot_serve_with_a_reason(
    case: str, fields: dict[str, object], expected: dict[EngineKind, str | None]
) -> None:
    record = _record(**fields)
    for kind in ENGINE_KINDS:
        refusal = engine_refusal(record, kind)
        assert (refusal[0] if refusal else None) == expected[kind], (case, kind)
        if refusal is not None:
            assert refusal[0] in REFUSAL_REASONS
            assert refusal[1]  # a sentence for the user


def test_refusal_messages_say_what_the_engine_cannot_do() -> None:
    vllm = engine_refusal(_record(modulesToSave=["lm_head"]), "vllm")
    assert vllm is not None and "['lm_head']" in vllm[1] and "vLLM" in vllm[1]
    dora_vllm = engine_refusal(_record(variant="dora"), "vllm")
    assert dora_vllm is not None and "vLLM cannot serve DoRA" in dora_vllm[1]
    dora_peft = engine_refusal(_record(variant="dora"), "peft")
    assert dora_peft is not None and "mixed-adapter batches" in dora_peft[1]


def test_counts_per_engine_leave_out_invalid_and_refused_adapters() -> None:
    records = [
        _record("plain8", rank=8),
        _record("plain64", rank=64),
        _record("mts", rank=128, modulesToSave=["lm_head"]),
        _record("dora", rank=16, variant="dora"),
        _record("broken", valid=False, reason="WeightsMissing", rank=256),
    ]
    assert servable_counts(records) == {"vllm": 2, "peft": 3}
    # Only what vLLM can serve: a rank-128 adapter vLLM refuses must not raise its rank.
    assert vllm_rank_histogram(records) == {8: 1, 64: 1}
    assert servable_counts([]) == {"vllm": 0, "peft": 0}
