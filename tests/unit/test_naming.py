"""One naming rule for both sides (lorafleet_api.naming), and the cases where the operator's
and the runtime's copies used to disagree."""

from __future__ import annotations

import pytest

from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.naming import (
    invalid_adapter_name_reason,
    is_adapter_name,
    is_dns1035_label,
    same_base_model,
    split_model,
)
from lorafleet_operator.builders.names import rayservice_name
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.model.loramodel import LoRAModel
from lorafleet_runtime.core.admission import judge_adapter


@pytest.mark.parametrize("name", ["support\n", "a\n", "support-v1\n", "x\r\n"])
def test_a_trailing_newline_makes_an_adapter_name_invalid(name: str) -> None:
    # Both copies used `^...$` with re.match, where `$` also matches before a final "\n":
    # "support\n" passed the catalog's check and the ingress's.
    assert not is_adapter_name(name)
    assert invalid_adapter_name_reason(name) is not None
    assert "'\\n'" in (invalid_adapter_name_reason(name) or "")


@pytest.mark.parametrize(
    "name", ["", "-a", ".hidden", "a/b", "a:b", "a..b", "ä", "a b", "x" * 129, "a\tb"]
)
def test_names_that_cannot_be_adapters(name: str) -> None:
    assert not is_adapter_name(name)


def test_a_model_id_with_a_trailing_newline_adapter_is_ours_but_not_an_adapter_name() -> None:
    ours, adapter = split_model("qwen:support\n", "qwen")
    assert ours and adapter == "support\n"
    assert not is_adapter_name(adapter)


@pytest.mark.parametrize("name", ["qwen\n", "qwen-\n", "a" * 64])
def test_dns1035_labels_are_matched_whole(name: str) -> None:
    assert not is_dns1035_label(name)
    with pytest.raises(InvalidSpecError):
        rayservice_name(name)


def test_a_loramodel_name_with_a_trailing_newline_is_refused() -> None:
    obj = {
        "metadata": {"name": "qwen\n", "namespace": "default"},
        "spec": {"baseModel": {"source": "Qwen/Qwen2.5-0.5B"}},
    }
    with pytest.raises(InvalidSpecError, match="DNS-1035"):
        LoRAModel.from_object(obj)


@pytest.mark.parametrize(
    "field,value",
    [("modelId", "qwen\n"), ("baseModel.source", "Qwen/Qwen2.5-0.5B\n")],
)
def test_spec_patterns_are_matched_whole(field: str, value: str) -> None:
    spec: dict[str, object] = {"baseModel": {"source": "Qwen/Qwen2.5-0.5B"}}
    if field == "modelId":
        spec["modelId"] = value
    else:
        spec["baseModel"] = {"source": value}
    obj = {"metadata": {"name": "qwen", "namespace": "default"}, "spec": spec}
    with pytest.raises(InvalidSpecError):
        LoRAModel.from_object(obj)


def _record(base_model: str) -> AdapterRecord:
    return AdapterRecord(
        name="a", uri="s3://b/a/", revision="1", valid=True, rank=8, base_model=base_model
    )


@pytest.mark.parametrize(
    "served,trained,same",
    [
        ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B", True),
        ("/models/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B", True),
        ("Qwen/Qwen2.5-0.5B", "/mnt/Qwen2.5-0.5B/", True),
        ("Qwen/Qwen2.5-0.5B", "Other/Qwen2.5-0.5B", False),
        ("/models/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B", False),
    ],
)
def test_catalog_validation_and_runtime_admission_agree_on_the_base_model(
    served: str, trained: str, same: bool
) -> None:
    # The runtime compared with `!=`: an adapter trained on the hub id was "incompatible"
    # with the same model served from a mounted copy, which the catalog had called valid.
    assert same_base_model(served, trained) is same
    verdict = judge_adapter("a", _record(trained), max_lora_rank=16, base_model=served)
    assert (verdict.outcome == "servable") is same
    if not same:
        assert verdict.reason == "BaseModelMismatch"
