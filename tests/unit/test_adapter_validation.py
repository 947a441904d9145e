"""Every kind of broken adapter folder gets its own one-word reason; valid ones pass."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lorafleet_api.naming import invalid_adapter_name_reason
from lorafleet_operator.adapters import (
    REASONS,
    StoredObject,
    group_folders,
    validate_adapter,
)
from lorafleet_operator.adapters.validation import MAX_CONFIG_BYTES

GOOD_CONFIG: dict[str, Any] = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj", "v_proj"],
    "base_model_name_or_path": "lorafleet/tiny-qwen2",
    "modules_to_save": None,
}
WEIGHTS = ("adapter_model.safetensors", 30_000)


def _folder(name: str, files: dict[str, int], nested: tuple[str, ...] = ()) -> Any:
    objects = [StoredObject(key=f"{name}/{f}", size=s, token="t") for f, s in files.items()]
    objects += [StoredObject(key=f"{name}/{path}", size=10, token="t") for path in nested]
    return group_folders(objects).folders[name]


def _validate(
    config: dict[str, Any] | bytes | None,
    *,
    name: str = "support-v2",
    files: dict[str, int] | None = None,
    nested: tuple[str, ...] = (),
    base_model: str | None = "lorafleet/tiny-qwen2",
    max_bytes: int = 10**9,
) -> Any:
    raw = json.dumps(config).encode() if isinstance(config, dict) else config
    if files is None:
        files = {"adapter_config.json": len(raw or b""), WEIGHTS[0]: WEIGHTS[1]}
    return validate_adapter(
        _folder(name, files, nested),
        raw,
        folder_uri=f"s3://b/loras/{name}/",
        base_model=base_model,
        max_adapter_bytes=max_bytes,
    )


def test_a_peft_lora_adapter_is_valid_with_its_metadata() -> None:
    record = _validate(GOOD_CONFIG)
    assert record.valid and record.reason is None
    assert (record.rank, record.alpha, record.peft_type) == (8, 16.0, "LORA")
    assert record.target_modules == ("q_proj", "v_proj")
    assert record.base_model == "lorafleet/tiny-qwen2"
    assert record.uri == "s3://b/loras/support-v2/"
    assert record.size_bytes == len(json.dumps(GOOD_CONFIG)) + WEIGHTS[1]
    assert {f.name for f in record.files} == {"adapter_config.json", WEIGHTS[0]}


def _with(**changes: Any) -> dict[str, Any]:
    config = dict(GOOD_CONFIG)
    for key, value in changes.items():
        if value is _DROP:
            config.pop(key)
        else:
            config[key] = value
    return config


_DROP = object()

BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("name with colon", {"name": "a:b"}, "NameInvalid"),
    ("name with dots", {"name": "a..b"}, "NameInvalid"),
    ("name with space", {"name": "my adapter"}, "NameInvalid"),
    ("name with control char", {"name": "a\x07b"}, "NameInvalid"),
    ("name too long", {"name": "a" * 129}, "NameInvalid"),
    ("name starting with dot", {"name": ".hidden"}, "NameInvalid"),
    ("too large", {"max_bytes": 1000}, "TooLarge"),
    (
        "config only in a subfolder",
        {"files": {"README.md": 5}, "nested": ("checkpoint-100/adapter_config.json",)},
        "Nested",
    ),
    ("no config", {"files": {WEIGHTS[0]: 10}}, "ConfigMissing"),
    (
        "config over 1 MiB",
        {"files": {"adapter_config.json": MAX_CONFIG_BYTES + 1, WEIGHTS[0]: 10}},
        "ConfigTooLarge",
    ),
    ("config not read", {"config": None}, "ConfigUnreadable"),
    ("config not JSON", {"config": b"{not json"}, "ConfigNotJson"),
    ("config not UTF-8", {"config": b"\xff\xfe\x00"}, "ConfigNotJson"),
    ("config is a list", {"config": b"[1, 2]"}, "ConfigNotObject"),
    ("prefix tuning", {"config": _with(peft_type="PREFIX_TUNING")}, "NotLora"),
    ("no peft_type", {"config": _with(peft_type=_DROP)}, "NotLora"),
    ("no rank", {"config": _with(r=_DROP)}, "RankMissing"),
    ("rank zero", {"config": _with(r=0)}, "RankInvalid"),
    ("rank negative", {"config": _with(r=-8)}, "RankInvalid"),
    ("rank as string", {"config": _with(r="8")}, "RankInvalid"),
    ("rank as float", {"config": _with(r=8.5)}, "RankInvalid"),
    ("rank as bool", {"config": _with(r=True)}, "RankInvalid"),
    ("alpha negative", {"config": _with(lora_alpha=-1)}, "AlphaInvalid"),
    ("alpha string", {"config": _with(lora_alpha="16")}, "AlphaInvalid"),
    ("no target modules", {"config": _with(target_modules=_DROP)}, "TargetModulesMissing"),
    ("empty target modules", {"config": _with(target_modules=[])}, "TargetModulesMissing"),
    ("no weights", {"files": {"adapter_config.json": 200}}, "WeightsMissing"),
    ("empty weights", {"files": {"adapter_config.json": 200, WEIGHTS[0]: 0}}, "WeightsEmpty"),
    (
        "other base model",
        {"config": _with(base_model_name_or_path="meta/llama")},
        "BaseModelMismatch",
    ),
    ("no base model named", {"config": _with(base_model_name_or_path=_DROP)}, "BaseModelMismatch"),
]


@pytest.mark.parametrize(("case", "kwargs", "reason"), BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_adapter_is_invalid_with_its_reason(
    case: str, kwargs: dict[str, Any], reason: str
) -> None:
    kwargs = dict(kwargs)
    config = kwargs.pop("config", GOOD_CONFIG)
    record = _validate(config, **kwargs)
    assert not record.valid, case
    assert record.reason == reason, record.message
    assert record.message  # a sentence for the user
    assert reason in REASONS
    assert reason.isalpha() and reason[0].isupper()  # one CamelCase word


def test_at_least_fifteen_kinds_of_broken_adapters_are_told_apart() -> None:
    assert len({reason for _, _, reason in BROKEN}) >= 15


SOME_ENGINES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "modules_to_save",
        _with(modules_to_save=["lm_head", "embed_tokens"]),
        {"modules_to_save": ("embed_tokens", "lm_head")},
    ),
    (
        "modules_to_save as one string",
        _with(modules_to_save="lm_head"),
        {"modules_to_save": ("lm_head",)},
    ),
    ("DoRA", _with(use_dora=True), {"variant": "dora"}),
    ("rank pattern", _with(rank_pattern={"q_proj": 16}), {"rank_pattern": True}),
    ("alpha pattern", _with(alpha_pattern={"q_proj": 32}), {"rank_pattern": True}),
]


@pytest.mark.parametrize(
    ("case", "config", "recorded"), SOME_ENGINES, ids=[c[0] for c in SOME_ENGINES]
)
def test_options_only_some_engines_serve_are_valid_and_recorded(
    case: str, config: dict[str, Any], recorded: dict[str, Any]
) -> None:
    # Which engine serves them is decided per engine (adapter_support), not by the catalog.
    record = _validate(config)
    assert record.valid and record.reason is None, case
    plain = {"modules_to_save": (), "variant": None, "rank_pattern": False}
    assert {key: getattr(record, key) for key in plain} == {**plain, **recorded}
    assert "ModulesToSave" not in REASONS and "UnsupportedOption" not in REASONS


def test_a_plain_lora_adapter_records_none_of_the_engine_specific_options() -> None:
    record = _validate(_with(modules_to_save=[], use_dora=False, rank_pattern={}))
    assert record.valid
    assert (record.modules_to_save, record.variant, record.rank_pattern) == ((), None, False)
    assert "modulesToSave" not in record.to_json() and "rankPattern" not in record.to_json()


def test_what_no_engine_serves_stays_invalid_whatever_the_options() -> None:
    record = _validate(
        _with(modules_to_save=["lm_head"], use_dora=True),
        files={"adapter_config.json": 200},
    )
    assert not record.valid and record.reason == "WeightsMissing"


def test_bin_weights_count_and_a_hub_id_matches_a_local_path_by_name() -> None:
    files = {"adapter_config.json": 300, "adapter_model.bin": 100}
    record = _validate(
        _with(base_model_name_or_path="/models/tiny-qwen2"),
        files=files,
        base_model="org/tiny-qwen2",
    )
    assert record.valid, record.message


def test_without_a_catalog_base_model_any_base_is_accepted() -> None:
    assert _validate(_with(base_model_name_or_path="meta/llama"), base_model=None).valid


@pytest.mark.parametrize("name", ["support-v2", "A_b.c-1", "x" * 128, "0"])
def test_safe_names_are_accepted(name: str) -> None:
    assert invalid_adapter_name_reason(name) is None


def test_a_reupload_is_a_new_revision() -> None:
    first = group_folders([StoredObject("a/adapter_config.json", 10, "etag1")]).folders["a"]
    again = group_folders([StoredObject("a/adapter_config.json", 10, "etag1")]).folders["a"]
    rewritten = group_folders([StoredObject("a/adapter_config.json", 10, "etag2")]).folders["a"]
    assert first.revision == again.revision != rewritten.revision


def test_grouping_ignores_stray_files_and_folder_markers_and_applies_globs() -> None:
    listing = group_folders(
        [
            StoredObject("README.md", 5, "t"),
            StoredObject("keep-1/", 0, "t"),
            StoredObject("keep-1/adapter_config.json", 5, "t"),
            StoredObject("keep-1/sub/deep.bin", 5, "t"),
            StoredObject("skip-1/adapter_config.json", 5, "t"),
            StoredObject("other/adapter_config.json", 5, "t"),
        ],
        include=["keep-*", "skip-*"],
        exclude=["skip-*"],
    )
    assert list(listing.folders) == ["keep-1"]
    assert listing.stray_files == 1
    assert listing.excluded == 2
    folder = listing.folders["keep-1"]
    assert list(folder.files) == ["adapter_config.json"]
    assert folder.nested == ("sub/deep.bin",)


def test_large_catalogs_are_listed_in_ranges_split_at_known_adapter_names() -> None:
    from lorafleet_operator.storage.scan import listing_splits

    assert listing_splits({}) == []
    few = {f"a{i:05d}": None for i in range(2_000)}
    assert listing_splits(few) == []  # one range is as fast for small catalogs
    many = {f"a{i:05d}": None for i in range(10_000)}
    splits = listing_splits(many)  # type: ignore[arg-type]
    assert len(splits) == 5  # six ranges of ~1,700 adapters
    assert splits == sorted(splits) and all(s in many for s in splits)
