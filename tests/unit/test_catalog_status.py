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
