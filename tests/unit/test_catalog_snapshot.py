"""What the operator takes from an AdapterCatalog: counts by rank and some adapter names."""

from __future__ import annotations

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
