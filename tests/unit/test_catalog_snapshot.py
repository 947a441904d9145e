"""What the operator takes from an AdapterCatalog: counts by rank and some adapter names."""

from __future__ import annotations

import pytest

from lorafleet_operator.model import CatalogSnapshot


def test_snapshot_reads_rank_histogram_and_adapters_from_status() -> None:
    snapshot = CatalogSnapshot.from_object(
        {
            "metadata": {"name": "support", "namespace": "demo"},
            "status": {
                "rankHistogram": {"8": 120, "64": 2},
                "adapters": [{"name": "refunds", "rank": 8}, {"name": "tone", "rank": 64}],
            },
        }
    )
    assert (snapshot.name, snapshot.namespace, snapshot.found) == ("support", "demo", True)
    assert snapshot.valid_adapters == 122
    assert snapshot.largest_valid_rank == 64
    assert [a.name for a in snapshot.adapters] == ["refunds", "tone"]


def test_without_histogram_the_adapter_list_is_counted() -> None:
    snapshot = CatalogSnapshot.from_object(
        {
            "metadata": {"name": "c"},
            "status": {"adapters": [{"name": "a", "rank": 16}, {"name": "b", "rank": 16}]},
        }
    )
    assert snapshot.rank_histogram == {16: 2}
    assert snapshot.namespace == "default"


def test_unsynced_or_malformed_status_yields_no_adapters_instead_of_an_error() -> None:
    unsynced = CatalogSnapshot.from_object({"metadata": {"name": "c", "namespace": "demo"}})
    assert unsynced.found and unsynced.valid_adapters == 0
    assert unsynced.largest_valid_rank is None
    garbled = CatalogSnapshot.from_object(
        {
            "metadata": {"name": "c"},
            "status": {
                "rankHistogram": {"eight": 1, "0": 3, "16": "many"},
                "adapters": [{"name": "a"}, "b", {"name": "c", "rank": 0}],
            },
        }
    )
    assert garbled.rank_histogram == {}
    assert garbled.adapters == ()


def test_missing_catalog_is_not_found() -> None:
    missing = CatalogSnapshot.missing("sales", "demo")
    assert not missing.found
    assert missing.valid_adapters == 0


def test_snapshot_reads_the_credentials_secret_and_the_index_shard_count() -> None:
    snapshot = CatalogSnapshot.from_object(
        {
            "metadata": {"name": "support", "namespace": "demo"},
            "spec": {
                "source": {"uri": "s3://b/p", "credentialsSecretRef": {"name": "s3-keys"}},
            },
            "status": {"index": {"configMap": "lorafleet-catalog.support", "shards": 4}},
        }
    )
    assert snapshot.credentials_secret == "s3-keys"
    assert snapshot.index_shards == 4


def test_no_secret_and_no_index_yet_read_as_none_and_zero() -> None:
    snapshot = CatalogSnapshot.from_object(
        {"metadata": {"name": "c"}, "spec": {"source": {"uri": "gs://b/p"}}}
    )
    assert snapshot.credentials_secret is None
    assert snapshot.index_shards == 0
    missing = CatalogSnapshot.missing("c", "demo")
    assert (missing.credentials_secret, missing.index_shards) == (None, 0)


@pytest.mark.parametrize(
    "spec,status",
    [
        ({"source": {"credentialsSecretRef": {"name": ""}}}, {"index": {"shards": -1}}),
        ({"source": {"credentialsSecretRef": {"name": 7}}}, {"index": {"shards": "4"}}),
        ({"source": {"credentialsSecretRef": "s3-keys"}}, {"index": {"shards": True}}),
        ({"source": "s3://b/p"}, {"index": 4}),
        ("spec", "status"),
    ],
)
def test_malformed_secret_refs_and_shard_counts_are_ignored(spec: object, status: object) -> None:
    snapshot = CatalogSnapshot.from_object(
        {"metadata": {"name": "c"}, "spec": spec, "status": status}
    )
    assert snapshot.credentials_secret is None
    assert snapshot.index_shards == 0


def test_a_status_from_before_engine_kinds_counts_its_valid_adapters_for_every_engine() -> None:
    # Syncs back then marked what vLLM refuses invalid: every valid adapter served anywhere.
    old = CatalogSnapshot.from_object(
        {
            "metadata": {"name": "c", "namespace": "demo"},
            "status": {
                "counts": {"found": 5, "valid": 4, "invalid": 1},
                "rankHistogram": {"8": 3, "16": 1},
                "adapters": [{"name": "a", "rank": 8, "revision": "r"}],
            },
        }
    )
    assert old.valid_adapters == 4
    assert (old.servable_by("vllm"), old.servable_by("peft")) == (4, 4)
    assert old.adapters[0].refused_by == {}


def test_malformed_per_engine_counts_and_refusals_are_skipped() -> None:
    snapshot = CatalogSnapshot.from_object(
        {
            "metadata": {"name": "c"},
            "status": {
                "counts": {"valid": True, "servable": {"vllm": -1, "peft": 3, "tpu": 9}},
                "rankHistogram": {"8": 2},
                "adapters": [
                    {"name": "a", "rank": 8, "refusedBy": {"vllm": 7, "peft": "X", "tpu": "Y"}},
                    {"name": "b", "rank": 8, "refusedBy": "vllm"},
                ],
            },
        }
    )
    assert snapshot.valid_adapters == 2
    assert snapshot.servable == {"peft": 3}
    assert [a.refused_by for a in snapshot.adapters] == [{"peft": "X"}, {}]
