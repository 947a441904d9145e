"""What the runtime answers for an adapter name before any replica is involved, and the
bounded per-name state behind it."""

from __future__ import annotations

import pytest

from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.naming import is_adapter_name, split_model
from lorafleet_runtime.core.admission import judge_adapter
from lorafleet_runtime.core.failures import FailureMemory
from lorafleet_runtime.core.labels import OTHER, AdapterLabels


def _record(**fields: object) -> AdapterRecord:
    data: dict[str, object] = {"name": "a", "uri": "s3://b/a/", "revision": "r1", "valid": True}
    data.update(fields)
    return AdapterRecord.model_validate(data)


def test_unknown_adapter_is_404() -> None:
    verdict = judge_adapter("nope", None, max_lora_rank=16)
    assert verdict.http_status == 404
    assert "none of the catalogs" in verdict.message


def test_invalid_adapter_is_422_with_the_catalogs_reason() -> None:
    record = _record(valid=False, reason="NoWeights", message="no adapter_model file")
    verdict = judge_adapter("a", record, max_lora_rank=16)
    assert verdict.http_status == 422
    assert verdict.reason == "NoWeights"
    assert "no adapter_model file" in verdict.message


def test_rank_above_the_engine_limit_is_422() -> None:
    verdict = judge_adapter("a", _record(rank=32), max_lora_rank=16)
    assert (verdict.http_status, verdict.reason) == (422, "RankTooHigh")
    assert "rank 32" in verdict.message


def test_valid_adapter_within_limits_is_servable() -> None:
    assert judge_adapter("a", _record(rank=16), max_lora_rank=16).http_status is None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("tiny", (True, None)),
        ("tiny:a0", (True, "a0")),
        ("other", (False, None)),
        ("tinyx:a0", (False, None)),
    ],
)
def test_split_model(model: str, expected: tuple[bool, str | None]) -> None:
    assert split_model(model, "tiny") == expected


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a:b", "x" * 129, "a\nb", ".hidden"])
def test_imis_adapter_names(name: str) -> None:
    assert not is_adapter_name(name)


def test_failure_memory_expires_and_stays_bounded() -> None:
    memory = FailureMemory(ttl_seconds=5, max_entries=3)
    memory.remember("a", "StorageUnreachable", "down", now=0)
    assert memory.recall("a", now=4.9) is not None
    assert memory.recall("a", now=5.0) is None
    for i in range(10):
        memory.remember(f"n{i}", "NotFound", "gone", now=10)
    assert len(memory) == 3
    assert memory.recall("n9", now=11) is not None
    assert memory.recall("n0", now=11) is None


def test_metric_labels_are_bounded() -> None:
    labels = AdapterLabels(k=2)
    assert [labels.label(n) for n in ["a", "b", "c", "a"]] == ["a", "b", OTHER, "a"]
    assert labels.label(None) == "base"
    assert labels.size == 2


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"modulesToSave": ["lm_head"]}, "ModulesToSave"),
        ({"variant": "dora"}, "UnsupportedOption"),
        ({"rankPattern": True}, "UnsupportedOption"),
    ],
)
def test_vllm_refuses_what_it_cannot_serve_with_422_and_the_reason(
    fields: dict[str, object], reason: str
) -> None:
    # The default engine is vLLM, so callers that predate engine kinds keep their answers.
    for verdict in (
        judge_adapter("a", _record(rank=8, **fields), max_lora_rank=16),
        judge_adapter("a", _record(rank=8, **fields), max_lora_rank=16, engine_kind="vllm"),
    ):
        assert (verdict.outcome, verdict.http_status, verdict.reason) == (
            "incompatible",
            422,
            reason,
        )
        assert "'a'" in verdict.message and "vllm" in verdict.message


def test_peft_serves_modules_to_save_and_rank_patterns_at_any_rank() -> None:
    for fields in ({"modulesToSave": ["lm_head"]}, {"rankPattern": True}, {}):
        record = _record(rank=256, **fields)
        assert judge_adapter("a", record, max_lora_rank=16, engine_kind="peft").http_status is None
    # vLLM keeps its rank limit.
    verdict = judge_adapter("a", _record(rank=256), max_lora_rank=16, engine_kind="vllm")
    assert verdict.reason == "RankTooHigh"


def test_peft_refuses_dora_and_nobody_serves_an_invalid_adapter() -> None:
    verdict = judge_adapter("a", _record(variant="dora"), max_lora_rank=16, engine_kind="peft")
    assert (verdict.http_status, verdict.reason) == (422, "UnsupportedOption")
    assert "mixed-adapter batches" in verdict.message
    broken = _record(valid=False, reason="WeightsMissing", modulesToSave=["lm_head"])
    verdict = judge_adapter("a", broken, max_lora_rank=16, engine_kind="peft")
    assert (verdict.outcome, verdict.reason) == ("invalid", "WeightsMissing")
