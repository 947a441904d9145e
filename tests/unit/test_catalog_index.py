"""The index ConfigMaps: stable names, every shard under the ConfigMap limit at 10,000
adapters, one added adapter rewrites one shard, and the runtime reads back what was written."""

from __future__ import annotations

import json

import pytest

from lorafleet_api.catalog_index import (
    MANIFEST_KEY,
    SHARD_KEY,
    AdapterFile,
    AdapterRecord,
    IndexFormatError,
    manifest_name,
    read_index,
    shard_name,
)
from lorafleet_api.names import LABEL_CATALOG, LABEL_CATALOG_INDEX_PART
from lorafleet_operator.builders import render_index_configmaps
from lorafleet_operator.model.adaptercatalog import AdapterCatalog

CONFIGMAP_LIMIT = 1024 * 1024


def _record(i: int, revision: str = "r1") -> AdapterRecord:
    name = f"customer-{i:05d}-support-adapter"
    return AdapterRecord(
        name=name,
        uri=f"s3://adapters/loras/qwen2.5-0.5b/{name}/",
        revision=revision,
        valid=i % 10 != 0,
        reason=None if i % 10 else "RankInvalid",
        message=None if i % 10 else "rank r='8' is not a positive integer",
        rank=8 if i % 10 else None,
        alpha=16.0,
        peft_type="LORA",
        base_model="Qwen/Qwen2.5-0.5B-Instruct",
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        files=(
            AdapterFile(name="adapter_config.json", size=812),
            AdapterFile(name="adapter_model.safetensors", size=4_404_312),
        ),
        size_bytes=4_405_124,
    )


CATALOG = AdapterCatalog.from_object(
    {
        "metadata": {"name": "support", "namespace": "demo", "uid": "uid-1", "generation": 1},
        "spec": {"source": {"uri": "s3://adapters/loras/qwen2.5-0.5b"}},
    }
)


def _texts(rendered: object) -> tuple[str, dict[str, str]]:
    manifest = rendered.manifest_configmap["data"][MANIFEST_KEY]  # type: ignore[attr-defined]
    shards = {
        cm["metadata"]["name"]: cm["data"][SHARD_KEY]
        for cm in rendered.shard_configmaps  # type: ignore[attr-defined]
    }
    return manifest, shards


def test_ten_thousand_adapters_fit_in_shards_under_the_configmap_limit() -> None:
    records = [_record(i) for i in range(10_000)]
    rendered = render_index_configmaps(CATALOG, records, "settings")
    assert len(rendered.shard_configmaps) > 1
    for cm in [rendered.manifest_configmap, *rendered.shard_configmaps]:
        assert len(json.dumps(cm).encode()) < CONFIGMAP_LIMIT
    manifest, shards = _texts(rendered)
    assert read_index(manifest, shards) == sorted(records, key=lambda r: r.name)


def test_names_labels_and_owner_follow_the_documented_scheme() -> None:
    rendered = render_index_configmaps(CATALOG, [_record(i) for i in range(3)], "settings")
    assert rendered.manifest_configmap["metadata"]["name"] == manifest_name("support")
    assert manifest_name("support") == "lorafleet-catalog.support"
    assert (
        [cm["metadata"]["name"] for cm in rendered.shard_configmaps]
        == [shard_name("support", 0)]
        == ["lorafleet-catalog.support.0"]
    )
    for cm in [rendered.manifest_configmap, *rendered.shard_configmaps]:
        labels = cm["metadata"]["labels"]
        assert labels[LABEL_CATALOG] == "support"
        assert labels[LABEL_CATALOG_INDEX_PART] in ("manifest", "shard")
        (owner,) = cm["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "AdapterCatalog",
            "support",
            "uid-1",
        )
    manifest = json.loads(rendered.manifest_configmap["data"][MANIFEST_KEY])
    assert manifest["formatVersion"] == 1
    assert manifest["uri"] == "s3://adapters/loras/qwen2.5-0.5b/"
    assert (manifest["adapters"], manifest["valid"], manifest["invalid"]) == (3, 2, 1)


def test_one_new_adapter_rewrites_one_shard() -> None:
    records = [_record(i) for i in range(10_000)]
    before = render_index_configmaps(CATALOG, records, "s")
    after = render_index_configmaps(CATALOG, [*records, _record(10_000)], "s")
    assert len(before.shard_configmaps) == len(after.shard_configmaps)
    changed = [
        b["metadata"]["name"]
        for b, a in zip(before.shard_configmaps, after.shard_configmaps, strict=True)
        if b["data"] != a["data"]
    ]
    assert len(changed) == 1
    assert before.manifest.digest != after.manifest.digest


def test_rendering_is_byte_stable() -> None:
    records = [_record(i) for i in range(100)]
    one = render_index_configmaps(CATALOG, records, "s")
    two = render_index_configmaps(CATALOG, list(reversed(records)), "s")
    assert _texts(one) == _texts(two)


def test_a_reader_detects_a_shard_from_another_sync() -> None:
    old = render_index_configmaps(CATALOG, [_record(1)], "s")
    new = render_index_configmaps(CATALOG, [_record(1, revision="r2")], "s")
    manifest, _ = _texts(new)
    _, old_shards = _texts(old)
    with pytest.raises(IndexFormatError, match="does not match"):
        read_index(manifest, old_shards)
    with pytest.raises(IndexFormatError, match="missing"):
        read_index(manifest, {})


def test_what_an_adapter_is_round_trips_and_plain_records_keep_their_bytes() -> None:
    special = _record(1).model_copy(
        update={"modules_to_save": ("embed_tokens", "lm_head"), "variant": "dora"}
    )
    patterned = _record(2).model_copy(update={"rank_pattern": True})
    line = json.loads(special.to_json())
    assert (line["modulesToSave"], line["variant"]) == (["embed_tokens", "lm_head"], "dora")
    assert json.loads(patterned.to_json())["rankPattern"] is True
    rendered = render_index_configmaps(CATALOG, [special, patterned, _record(3)], "s")
    manifest, shards = _texts(rendered)
    assert read_index(manifest, shards) == sorted(
        [special, patterned, _record(3)], key=lambda r: r.name
    )
    # A plain adapter's line has none of the new keys: indexes of plain adapters are
    # byte-identical to those written before the fields existed.
    plain = json.loads(_record(3).to_json())
    assert not {"modulesToSave", "variant", "rankPattern"} & set(plain)


def test_a_record_written_before_the_engine_fields_still_parses_as_plain_lora() -> None:
    old_line = (
        '{"baseModel":"Qwen/Qwen2.5-0.5B-Instruct","files":[{"name":"adapter_config.json",'
        '"size":812}],"name":"tone","peftType":"LORA","rank":8,"revision":"r1",'
        '"sizeBytes":812,"targetModules":["q_proj"],"uri":"s3://a/tone/","valid":true}'
    )
    record = AdapterRecord.model_validate_json(old_line)
    assert record.valid and record.rank == 8
    assert (record.modules_to_save, record.variant, record.rank_pattern) == ((), None, False)
    assert record.to_json() == old_line
