"""Every kind of broken adapter folder gets its own one-word reason; valid ones pass."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import struct
from pathlib import Path
from typing import IO, Any

import pytest

from lorafleet_api.adapter_files import SAFETENSORS_HEAD_BYTES, safetensors_problem
from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.naming import invalid_adapter_name_reason
from lorafleet_operator.adapters import (
    REASONS,
    StoredObject,
    group_folders,
    validate_adapter,
)
from lorafleet_operator.adapters.validation import MAX_CONFIG_BYTES
from lorafleet_operator.model.adaptercatalog import AdapterCatalogSpec
from lorafleet_operator.storage import scan_source
from lorafleet_runtime.adapters.disk_cache import AdapterDiskCache, folder_name
from lorafleet_runtime.adapters.remote_files import AdapterStorageError, LocalFileSource
from lorafleet_testbed.adapter_trees import safetensors_bytes

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
    # What the validator answers for the table's folders, not the table's own column.
    told: dict[str | None, str] = {}
    for case, kwargs, _ in BROKEN:
        kwargs = dict(kwargs)
        config = kwargs.pop("config", GOOD_CONFIG)
        told.setdefault(_validate(config, **kwargs).reason, case)
    assert None not in told, f"{told[None]} was found valid"
    assert len(told) >= 15, sorted(told, key=str)


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


# ---------------------------------------------------------------- what real buckets hold
# (issue 14): weight files that are not safetensors, links in mounted folders, configs nested
# too deep, base model spellings, names equal but for case. The operator's scan and the
# runtime's download are both run on real folders; nothing is mocked.

GOOD_WEIGHTS = safetensors_bytes(b"\x01" * 256, name="base_model.model.q_proj.lora_A.weight")
NOT_SAFETENSORS: list[tuple[str, bytes]] = [
    ("pickle", pickle.dumps({"lora_A": [0.0] * 64}, protocol=2)),
    ("torch zip", b"PK\x03\x04" + bytes(range(256)) * 4),
    ("random bytes", random.Random(3).randbytes(5000)),
    ("truncated", GOOD_WEIGHTS[:-17]),
    ("header length past the end", struct.pack("<Q", 10_000) + GOOD_WEIGHTS[8:]),
    ("header length 2**64-1", b"\xff" * 8 + GOOD_WEIGHTS[8:]),
    ("seven bytes", b"\x02\x00\x00\x00\x00\x00\x00"),
    ("header not an object", struct.pack("<Q", 4) + b"[1] " + b"\0" * 10),
    ("extra bytes after the tensors", GOOD_WEIGHTS + b"#!/bin/sh\n"),
    (
        "tensor span not its shape",
        safetensors_bytes(b"\0" * 8)[:-8].replace(b'"shape": [8]', b'"shape": [9]') + b"\0" * 8,
    ),
]


@pytest.mark.parametrize(("case", "body"), NOT_SAFETENSORS, ids=[c[0] for c in NOT_SAFETENSORS])
def test_a_weight_file_that_is_not_safetensors_is_refused_from_its_first_bytes(
    case: str, body: bytes
) -> None:
    raw = json.dumps(GOOD_CONFIG).encode()
    record = validate_adapter(
        _folder("a", {"adapter_config.json": len(raw), WEIGHTS[0]: len(body)}),
        raw,
        folder_uri="s3://b/loras/a/",
        base_model="lorafleet/tiny-qwen2",
        max_adapter_bytes=10**9,
        weights_head=body[:SAFETENSORS_HEAD_BYTES],
    )
    assert (record.valid, record.reason) == (False, "WeightsNotSafetensors"), case
    assert "adapter_model.safetensors" in (record.message or "")
    assert "WeightsNotSafetensors" in REASONS


def test_a_real_safetensors_file_passes_and_a_header_past_the_read_is_left_to_the_runtime() -> None:
    assert safetensors_problem(GOOD_WEIGHTS, len(GOOD_WEIGHTS)) is None
    # The operator reads SAFETENSORS_HEAD_BYTES: a longer header is checked by length only.
    assert safetensors_problem(GOOD_WEIGHTS[:40], len(GOOD_WEIGHTS)) is None
    assert safetensors_problem(GOOD_WEIGHTS[:-1], len(GOOD_WEIGHTS) - 1) is not None


def test_a_config_nested_too_deep_is_refused_not_a_crash() -> None:
    # json.loads raised RecursionError, which no except caught: the whole sync failed.
    record = _validate(b"[" * 100_000 + b"]" * 100_000)
    assert (record.valid, record.reason) == (False, "ConfigNotJson")
    assert "nested too deeply" in (record.message or "")


def test_a_huge_config_is_refused_by_its_listed_size_with_the_limit_named() -> None:
    record = _validate(None, files={"adapter_config.json": 50 * 1024 * 1024, WEIGHTS[0]: 10})
    assert (record.valid, record.reason) == (False, "ConfigTooLarge")
    assert "52428800 bytes" in (record.message or "") and "1048576" in (record.message or "")


@pytest.mark.parametrize(
    ("served", "trained", "same"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", "qwen/qwen2.5-0.5b-instruct", True),
        ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct/", True),
        ("Qwen/Qwen2.5-0.5B-Instruct", "hf://Qwen/Qwen2.5-0.5B-Instruct", True),
        ("Qwen/Qwen2.5-0.5B-Instruct", "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct", True),
        ("Qwen/Qwen2.5-0.5B-Instruct", "/data/models/qwen2.5-0.5b-instruct/", True),
        ("/mnt/Qwen2.5-0.5B-Instruct", "qwen/qwen2.5-0.5b-instruct", True),
        ("Qwen/Qwen2.5-0.5B-Instruct", "Someone/Qwen2.5-0.5B-Instruct", False),
        ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", False),
        ("Qwen/Qwen2.5-0.5B-Instruct", "hf://Qwen/Qwen2.5-0.5B", False),
    ],
)
def test_base_model_spellings_of_one_hub_id_match_and_a_mismatch_names_both(
    served: str, trained: str, same: bool
) -> None:
    record = _validate(_with(base_model_name_or_path=trained), base_model=served)
    assert record.valid is same, record.message
    if not same:
        assert record.reason == "BaseModelMismatch"
        assert repr(trained) in (record.message or "") and repr(served) in (record.message or "")


def _write_adapter(folder: Path, **config: Any) -> None:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({**GOOD_CONFIG, **config}))
    (folder / "adapter_model.safetensors").write_bytes(GOOD_WEIGHTS)


def _scan_folder(root: Path, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = AdapterCatalogSpec.model_validate(
        {"source": {"uri": f"file://{root}"}, "baseModel": "lorafleet/tiny-qwen2"}
    )
    result = asyncio.run(scan_source(spec, None, previous))
    return {record.name: record for record in result.records}


def test_links_in_a_mounted_catalog_are_refused_and_never_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "loras", tmp_path / "outside"
    _write_adapter(root / "good")
    _write_adapter(outside / "elsewhere")
    # A secret next to the catalog, in JSON that would pass as a config.
    (outside / "secret.json").write_text(json.dumps({**GOOD_CONFIG, "r": 64, "token": "s3cr3t"}))
    _write_adapter(root / "config-link")
    (root / "config-link" / "adapter_config.json").unlink()
    (root / "config-link" / "adapter_config.json").symlink_to(outside / "secret.json")
    _write_adapter(root / "passwd")
    (root / "passwd" / "adapter_model.safetensors").unlink()
    (root / "passwd" / "adapter_model.safetensors").symlink_to("/etc/passwd")
    _write_adapter(root / "inside")
    (root / "inside" / "adapter_model.safetensors").unlink()
    (root / "inside" / "adapter_model.safetensors").symlink_to(
        Path("..") / "good" / "adapter_model.safetensors"
    )
    _write_adapter(root / "dir-link")
    (root / "dir-link" / "more").symlink_to(outside / "elsewhere")
    (root / "folder-link").symlink_to(outside / "elsewhere", target_is_directory=True)
    (root / "stray-link.json").symlink_to(outside / "secret.json")

    records = _scan_folder(root)
    assert {name: r.reason for name, r in records.items()} == {
        "good": None,
        "config-link": "Symlink",
        "passwd": "Symlink",
        "inside": "Symlink",
        "dir-link": "Symlink",
        "folder-link": "Symlink",
    }
    assert "outside the catalog" in (records["passwd"].message or "")
    assert "in the catalog" in (records["inside"].message or "")
    assert "the folder folder-link" in (records["folder-link"].message or "")
    # Nothing behind a link was read into the index (the secret's rank, its token).
    assert all(r.rank is None for name, r in records.items() if name != "good")
    assert "s3cr3t" not in json.dumps([r.to_json() for r in records.values()])
    # The link being removed is a new revision: the folder is judged again.
    (root / "dir-link" / "more").unlink()
    assert _scan_folder(root, records)["dir-link"].valid


def test_a_link_swapped_in_after_the_listing_is_not_followed_by_the_operator(
    tmp_path: Path,
) -> None:
    from lorafleet_operator.errors import AccessDeniedError
    from lorafleet_operator.storage import open_storage

    root = tmp_path / "loras"
    _write_adapter(root / "a")
    (tmp_path / "secret.json").write_text('{"token": "s3cr3t"}')
    spec = AdapterCatalogSpec.model_validate({"source": {"uri": f"file://{root}"}})
    storage = open_storage(spec.source)
    (root / "a" / "adapter_config.json").unlink()
    (root / "a" / "adapter_config.json").symlink_to(tmp_path / "secret.json")

    async def read() -> bytes:
        try:
            return await storage.read("a/adapter_config.json", 1000)
        finally:
            await storage.close()

    with pytest.raises(AccessDeniedError) as err:
        asyncio.run(read())
    assert "symbolic link" in err.value.message and "s3cr3t" not in err.value.message


def _record(folder: Path, name: str, files: dict[str, int] | None = None) -> AdapterRecord:
    if files is None:
        files = {p.name: p.lstat().st_size for p in sorted(folder.iterdir())}
    return AdapterRecord.model_validate(
        {
            "name": name,
            "uri": f"file://{folder}/",
            "revision": "r1",
            "valid": True,
            "rank": 8,
            "files": [{"name": n, "size": s} for n, s in files.items()],
            "sizeBytes": sum(files.values()),
        }
    )


class _MeteredSource(LocalFileSource):
    """The runtime's real file:// source, counting the bytes the cache pulls from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def _open(self, uri: str) -> IO[bytes]:
        return _Metered(super()._open(uri), self)


class _Metered:
    def __init__(self, stream: IO[bytes], source: _MeteredSource) -> None:
        self.stream, self.source = stream, source

    def read(self, n: int = -1) -> bytes:
        chunk = self.stream.read(n)
        self.source.read_bytes += len(chunk)
        return chunk

    def __enter__(self) -> _Metered:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


@pytest.mark.parametrize("link", ["file", "folder"])
def test_the_runtime_never_copies_through_a_link_from_a_mounted_catalog(
    tmp_path: Path, link: str
) -> None:
    root = tmp_path / "loras"
    _write_adapter(root / "a")
    record = _record(root / "a", "a")
    if link == "file":
        # Swapped after the sync: the record still lists the file with its size.
        (tmp_path / "passwd").write_bytes(GOOD_WEIGHTS)
        (root / "a" / "adapter_model.safetensors").unlink()
        (root / "a" / "adapter_model.safetensors").symlink_to(tmp_path / "passwd")
    else:
        (root / "a").rename(tmp_path / "moved")
        (root / "a").symlink_to(tmp_path / "moved", target_is_directory=True)
    cache = AdapterDiskCache(tmp_path / "cache", tries=1)
    with pytest.raises(AdapterStorageError) as err:
        asyncio.run(cache.ensure(record, LocalFileSource()))
    assert err.value.reason == "AccessDenied"
    assert "symbolic link" in err.value.message
    assert cache.cached() == [] and list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize(("case", "body"), NOT_SAFETENSORS, ids=[c[0] for c in NOT_SAFETENSORS])
def test_the_runtime_never_hands_a_non_safetensors_file_to_the_engine(
    tmp_path: Path, case: str, body: bytes
) -> None:
    # Valid at the last sync; rewritten since with the same size (or never checked in full).
    _write_adapter(tmp_path / "loras" / "a")
    (tmp_path / "loras" / "a" / "adapter_model.safetensors").write_bytes(body)
    cache = AdapterDiskCache(tmp_path / "cache")
    with pytest.raises(AdapterStorageError) as err:
        asyncio.run(cache.ensure(_record(tmp_path / "loras" / "a", "a"), LocalFileSource()))
    assert err.value.reason == "WeightsNotSafetensors", case
    assert cache.cached() == [] and list((tmp_path / "cache").iterdir()) == []


def test_the_runtime_refuses_a_huge_or_deep_config_without_reading_it_whole(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "loras" / "a"
    _write_adapter(folder)
    cache = AdapterDiskCache(tmp_path / "cache")
    source = _MeteredSource()
    # A record (an old index, a hand-written one) listing a 50 MB config: refused unread.
    huge = _record(folder, "a", {"adapter_config.json": 50 * 1024 * 1024, WEIGHTS[0]: 10})
    with pytest.raises(AdapterStorageError) as err:
        asyncio.run(cache.ensure(huge, source))
    assert err.value.reason == "ConfigTooLarge" and "1048576" in err.value.message
    assert source.read_bytes == 0
    # A config rewritten to 5 MiB since the sync: no more than the recorded size + 1 is read.
    record = _record(folder, "a")
    (folder / "adapter_config.json").write_bytes(b" " * (5 * 1024 * 1024))
    with pytest.raises(AdapterStorageError) as err:
        asyncio.run(cache.ensure(record, source))
    assert err.value.reason == "Corrupt"
    assert source.read_bytes <= sum(f.size for f in record.files) + 2
    # Same size, nested too deep to parse: refused, not a crash of the replica.
    size = next(f.size for f in record.files if f.name == "adapter_config.json")
    (folder / "adapter_config.json").write_bytes(b"[" * (size // 2) + b"]" * (size - size // 2))
    with pytest.raises(AdapterStorageError) as err:
        asyncio.run(cache.ensure(record, source))
    assert err.value.reason == "ConfigNotJson"
    assert cache.cached() == []


def test_names_equal_but_for_case_are_both_refused_until_one_is_renamed(tmp_path: Path) -> None:
    root = tmp_path / "loras"
    for name in ("billing", "Billing", "support"):
        _write_adapter(root / name)
    records = _scan_folder(root)
    assert {n: r.reason for n, r in records.items()} == {
        "Billing": "NameClash",
        "billing": "NameClash",
        "support": None,
    }
    assert "'billing'" in (records["Billing"].message or "")
    assert "'Billing'" in (records["billing"].message or "")
    # Renaming one frees the other at the next sync, although its folder did not change.
    (root / "Billing").rename(root / "billing-eu")
    again = _scan_folder(root, records)
    assert {n: r.reason for n, r in again.items()} == {
        "billing": None,
        "billing-eu": None,
        "support": None,
    }


def test_the_runtime_keeps_names_equal_but_for_case_in_separate_folders() -> None:
    # Two catalogs may each hold one of them; a case-insensitive disk must not merge them.
    assert folder_name("Billing", "r1").lower() != folder_name("billing", "r1").lower()


def test_a_fifo_named_adapter_config_json_is_refused_without_hanging_the_sync(
    tmp_path: Path,
) -> None:
    # open() on a FIFO waits for a writer: one such file stalled a sync thread forever.
    root = tmp_path / "loras"
    _write_adapter(root / "good")
    _write_adapter(root / "fifo")
    (root / "fifo" / "adapter_config.json").unlink()
    os.mkfifo(root / "fifo" / "adapter_config.json")
    spec = AdapterCatalogSpec.model_validate({"source": {"uri": f"file://{root}"}})
    result = asyncio.run(asyncio.wait_for(scan_source(spec), timeout=20))
    reasons = {r.name: (r.reason, r.message) for r in result.records}
    assert reasons["good"] == (None, None)
    assert reasons["fifo"][0] == "ConfigUnreadable"
    assert "not a regular file" in (reasons["fifo"][1] or "")
