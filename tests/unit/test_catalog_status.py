"""AdapterCatalog status: small whatever the catalog's size; a failure keeps the last good
counts and index and says why in Ready."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from lorafleet_api.catalog_index import AdapterRecord, build_index
from lorafleet_operator.model import CatalogSnapshot
from lorafleet_operator.status import failed_status, synced_status

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _records(n: int) -> list[AdapterRecord]:
    return [
        AdapterRecord(
            name=f"a{i:05d}",
            uri=f"s3://b/p/a{i:05d}/",
            revision="r",
            valid=i % 4 != 0,
            reason=None if i % 4 else "RankMissing",
            message=None if i % 4 else "adapter_config.json has no rank (r)",
            rank=(8 if i % 2 else 64) if i % 4 else None,
        )
        for i in range(n)
    ]


def _synced(records: list[AdapterRecord], previous: dict | None = None) -> dict:
    manifest, _ = build_index("c", "ns", "s3://b/p/", records)
    return synced_status(
        generation=3,
        uri="s3://b/p/",
        records=records,
        stray_files=1,
        excluded=2,
        manifest=manifest,
        manifest_configmap="lorafleet-catalog.c",
        previous_status=previous,
        now=NOW,
        duration_seconds=1.23456,
    )


def test_status_of_ten_thousand_adapters_stays_small_and_counts_everything() -> None:
    status = _synced(_records(10_000))
    assert len(json.dumps(status)) < 32 * 1024
    assert status["counts"] == {
        "found": 10_000,
        "valid": 7_500,
        "invalid": 2_500,
        "excluded": 2,
        "strayFiles": 1,
        "servable": {"vllm": 7_500, "peft": 7_500},
    }
    assert status["rankHistogram"] == {"8": 5_000, "64": 2_500}
    assert len(status["adapters"]) == 50 and len(status["invalidAdapters"]) == 50
    assert status["invalidAdapters"][0]["reason"] == "RankMissing"
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Synced")
    assert status["index"]["configMap"] == "lorafleet-catalog.c"
    assert status["lastSyncTime"] == "2026-11-22T12:00:00Z"


def test_loramodels_read_the_catalog_status_as_written() -> None:
    status = _synced(_records(8))
    snapshot = CatalogSnapshot.from_object(
        {"metadata": {"name": "c", "namespace": "ns"}, "status": status}
    )
    assert snapshot.valid_adapters == 6
    assert snapshot.largest_valid_rank == 64


def test_a_failed_sync_keeps_the_last_good_result_and_says_why() -> None:
    good = _synced(_records(8))
    failed = failed_status(
        generation=3,
        reason="StorageUnreachable",
        message="S3 endpoint unreachable",
        previous_status=good,
        now=NOW + timedelta(minutes=5),
    )
    assert failed["counts"] == good["counts"]
    assert failed["index"] == good["index"]
    assert failed["lastSyncTime"] == good["lastSyncTime"]
    ready = {c["type"]: c for c in failed["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "StorageUnreachable")
    assert ready["lastTransitionTime"] == "2026-11-22T12:05:00Z"
    recovered = _synced(_records(8), previous=failed)
    ready = {c["type"]: c for c in recovered["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Synced")


def test_counts_and_listed_adapters_say_which_engine_serves_what() -> None:
    plain = _records(8)  # 6 valid: ranks 8 and 64
    special = [
        AdapterRecord(
            name="m-head",
            uri="s3://b/p/m-head/",
            revision="r",
            valid=True,
            rank=128,
            modules_to_save=("lm_head",),
        ),
        AdapterRecord(
            name="m-dora",
            uri="s3://b/p/m-dora/",
            revision="r",
            valid=True,
            rank=8,
            variant="dora",
        ),
    ]
    records = sorted(plain + special, key=lambda r: r.name)
    status = _synced(records)
    assert status["counts"]["valid"] == 8
    assert status["counts"]["servable"] == {"vllm": 6, "peft": 7}
    # The histogram counts what vLLM can serve: the rank-128 adapter it refuses is not in it.
    assert status["rankHistogram"] == {"8": 4, "64": 2}
    listed = {entry["name"]: entry for entry in status["adapters"]}
    assert listed["m-head"]["refusedBy"] == {"vllm": "ModulesToSave"}
    assert listed["m-dora"]["refusedBy"] == {
        "vllm": "UnsupportedOption",
        "peft": "UnsupportedOption",
    }
    assert "refusedBy" not in listed["a00001"]
    snapshot = CatalogSnapshot.from_object(
        {"metadata": {"name": "c", "namespace": "ns"}, "status": status}
    )
    assert (snapshot.valid_adapters, snapshot.largest_valid_rank) == (8, 64)
    assert (snapshot.servable_by("vllm"), snapshot.servable_by("peft")) == (6, 7)
    refused = {a.name: a.refused_by for a in snapshot.adapters if a.refused_by}
    assert refused == {
        "m-dora": {"vllm": "UnsupportedOption", "peft": "UnsupportedOption"},
        "m-head": {"vllm": "ModulesToSave"},
    }
