"""The operator's Prometheus metrics: what a reconcile or a catalog sync records, labels that
stay within a fixed vocabulary, per-catalog series that go with the catalog, and an endpoint
Prometheus can parse (or a clear error when its port is taken)."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from lorafleet_cli.main import main
from lorafleet_operator import errors
from lorafleet_operator.adapters import IndexChanges
from lorafleet_operator.k8s.client import KubeApiError
from lorafleet_operator.metrics import (
    REASONS,
    RESULTS,
    MetricsEndpointError,
    OperatorMetrics,
    result_of,
)
from lorafleet_operator.model.config import OperatorConfig, split_host_port
from lorafleet_operator.reconcile import controllers
from lorafleet_operator.reconcile.adaptercatalog import SyncOutcome
from lorafleet_operator.reconcile.state import OperatorState

LOGGER = logging.getLogger("test")


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def reconciles(metrics: OperatorMetrics, kind: str, result: str) -> float | None:
    return value(metrics, "lorafleet_operator_reconciles_total", kind=kind, result=result)


def durations(metrics: OperatorMetrics, kind: str) -> tuple[float | None, float | None]:
    count = value(metrics, "lorafleet_operator_reconcile_duration_seconds_count", kind=kind)
    total = value(metrics, "lorafleet_operator_reconcile_duration_seconds_sum", kind=kind)
    return count, total


def catalog_series(metrics: OperatorMetrics, namespace: str, catalog: str) -> list[str]:
    """Every sample that names the catalog, as ``name{labels}``."""
    return [
        f"{sample.name}{sorted(sample.labels.items())}"
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.labels.get("namespace") == namespace and sample.labels.get("catalog") == catalog
    ]


def test_every_kind_and_result_starts_at_zero_and_a_reconcile_counts_once() -> None:
    metrics = OperatorMetrics(process_collectors=False)
    for kind in ("LoRAModel", "AdapterCatalog"):
        for result in RESULTS:
            assert reconciles(metrics, kind, result) == 0
    metrics.reconciled("LoRAModel", 0.02)
    metrics.reconciled("LoRAModel", 0.5, "InvalidSpec")
    metrics.reconciled("AdapterCatalog", 40.0, "AccessDenied")
    assert reconciles(metrics, "LoRAModel", "success") == 1
    assert reconciles(metrics, "LoRAModel", "invalid_spec") == 1
    assert reconciles(metrics, "AdapterCatalog", "storage_error") == 1
    assert reconciles(metrics, "AdapterCatalog", "success") == 0
    assert durations(metrics, "LoRAModel") == (2, pytest.approx(0.52))
    # A 40 s sync of a large catalog lands in a bucket of its own, not only in +Inf.
    le_30 = value(
        metrics,
        "lorafleet_operator_reconcile_duration_seconds_bucket",
        kind="AdapterCatalog",
        le="30.0",
    )
    le_60 = value(
        metrics,
        "lorafleet_operator_reconcile_duration_seconds_bucket",
        kind="AdapterCatalog",
        le="60.0",
    )
    assert (le_30, le_60) == (0, 1)
    with pytest.raises(ValueError, match="unknown kind"):
        metrics.reconciled("RayService", 0.1)


def test_failure_reasons_map_to_a_fixed_vocabulary() -> None:
    error_types = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.LorafleetError)
    ]
    # Every reason an error type carries is a label value of its own.
    assert {cls.default_reason for cls in error_types} <= set(REASONS)
    assert {"ApiError", "Crash", "Other"} <= set(REASONS)
    assert result_of(None) == "success"
    assert result_of("InvalidSpec") == "invalid_spec"
    for reason in ("StorageError", "StorageUnreachable", "AccessDenied", "NotFound"):
        assert result_of(reason) == "storage_error"
    assert result_of("ApiError") == "api_error"
    assert result_of("Crash") == "crash"
    assert result_of("DependencyMissing") == "error"
    assert result_of("s3://key:secret@bucket went away") == "error"
    assert {result_of(reason) for reason in REASONS} <= set(RESULTS)


def test_an_unknown_reason_is_counted_as_other_never_as_itself() -> None:
    metrics = OperatorMetrics(process_collectors=False)
    odd = "SomethingNew: s3://AKIA:secret@bucket/adapter-x"
    metrics.catalog_sync_failed("team-a", "support", odd)
    metrics.catalog_sync_failed("team-a", "support", "AccessDenied")
    metrics.reconciled("AdapterCatalog", 1.0, odd)
    failures = "lorafleet_catalog_sync_failures_total"
    assert value(metrics, failures, namespace="team-a", catalog="support", reason="Other") == 1
    assert (
        value(metrics, failures, namespace="team-a", catalog="support", reason="AccessDenied") == 1
    )
    assert reconciles(metrics, "AdapterCatalog", "error") == 1
    text = metrics.exposition().decode()
    assert "secret" not in text
    assert "SomethingNew" not in text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "reason" in sample.labels:
                assert sample.labels["reason"] in REASONS
            if "result" in sample.labels:
                assert sample.labels["result"] in RESULTS


def test_a_sync_sets_the_catalog_gauges_and_forgetting_the_catalog_removes_them() -> None:
    metrics = OperatorMetrics(process_collectors=False)
    for catalog in ("support", "billing"):
        metrics.catalog_synced(
            "team-a",
            catalog,
            found=12,
            valid=9,
            invalid=3,
            seconds=2.5,
            finished_at=1_800_000_000.0,
        )
    metrics.catalog_sync_failed("team-a", "support", "StorageUnreachable")
    adapters = "lorafleet_catalog_adapters"
    labels = {"namespace": "team-a", "catalog": "support"}
    assert value(metrics, adapters, **labels, state="found") == 12
    assert value(metrics, adapters, **labels, state="valid") == 9
    assert value(metrics, adapters, **labels, state="invalid") == 3
    assert value(metrics, "lorafleet_catalog_sync_duration_seconds", **labels) == 2.5
    assert value(metrics, "lorafleet_catalog_last_success_timestamp_seconds", **labels) == 1.8e9
    # A later sync replaces the figures rather than adding to them.
    metrics.catalog_synced(
        "team-a", "support", found=13, valid=10, invalid=3, seconds=1.0, finished_at=1.9e9
    )
    assert value(metrics, adapters, **labels, state="found") == 13

    metrics.forget_catalog("team-a", "support")
    assert catalog_series(metrics, "team-a", "support") == []
    assert "support" not in metrics.exposition().decode()
    # Another catalog keeps its series; the same name in another namespace is another catalog.
    assert value(metrics, adapters, namespace="team-a", catalog="billing", state="found") == 12
    metrics.forget_catalog("team-b", "billing")
    assert catalog_series(metrics, "team-a", "billing")


def test_deleting_a_catalog_forgets_its_series_with_the_rest_of_its_state() -> None:
    state = OperatorState(config=OperatorConfig())
    state.metrics.catalog_synced(
        "team-a", "support", found=1, valid=1, invalid=0, seconds=0.1, finished_at=1.0
    )
    state.metrics.catalog_sync_failed("team-a", "support", "NotFound")
    assert catalog_series(state.metrics, "team-a", "support")
    state.forget_catalog(("team-a", "support"))
    assert catalog_series(state.metrics, "team-a", "support") == []


def test_the_exposition_parses_and_includes_the_process_metrics() -> None:
    metrics = OperatorMetrics()
    metrics.reconciled("LoRAModel", 0.01)
    metrics.catalog_synced(
        "team-a", "support", found=3, valid=2, invalid=1, seconds=0.3, finished_at=1.0
    )
    metrics.catalog_sync_failed("team-a", "support", "AccessDenied")
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert families["lorafleet_operator_reconciles"].type == "counter"
    assert families["lorafleet_operator_reconcile_duration_seconds"].type == "histogram"
    assert families["lorafleet_catalog_adapters"].type == "gauge"
    assert families["lorafleet_catalog_sync_duration_seconds"].type == "gauge"
    assert families["lorafleet_catalog_last_success_timestamp_seconds"].type == "gauge"
    assert families["lorafleet_catalog_sync_failures"].type == "counter"
    assert "process_resident_memory_bytes" in families
    assert "python_info" in families
    states = {
        s.labels["state"]: s.value
        for s in families["lorafleet_catalog_adapters"].samples
        if s.labels["catalog"] == "support"
    }
    assert states == {"found": 3, "valid": 2, "invalid": 1}


# ---------------------------------------------------------------- the controllers' hooks
class FakeKube:
    """Only what the controllers call besides the reconcilers (which are replaced)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def post_event(self, involved: Any, *, reason: str, **_: Any) -> None:
        self.events.append(reason)

    async def list(self, *_: Any) -> list[Any]:
        return []


CATALOG_BODY = {
    "apiVersion": "lorafleet.dev/v1alpha1",
    "kind": "AdapterCatalog",
    "metadata": {"namespace": "team-a", "name": "support"},
    "spec": {"source": {"uri": "file:///mnt/adapters"}, "syncInterval": "5m"},
}


def connected_state() -> OperatorState:
    state = OperatorState(config=OperatorConfig())
    state._kube = FakeKube()  # type: ignore[assignment]
    return state


def test_a_successful_sync_records_the_outcome_and_a_failed_one_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = connected_state()
    outcome = SyncOutcome(
        catalog="team-a/support",
        changes=IndexChanges(added=(), changed=(), removed=()),
        found=20,
        valid=18,
        invalid=2,
        configs_read=20,
        configmaps_written=2,
        duration_seconds=3.25,
        phase_seconds={"scan": 3.0, "index": 0.25},
        summary_changed=False,
    )
    failure: list[Exception] = []

    async def fake_sync(*_: Any, **__: Any) -> SyncOutcome:
        if failure:
            raise failure[0]
        return outcome

    monkeypatch.setattr(controllers, "sync_adaptercatalog", fake_sync)
    asyncio.run(controllers.sync_catalog(state, CATALOG_BODY, LOGGER))
    metrics = state.metrics
    labels = {"namespace": "team-a", "catalog": "support"}
    assert reconciles(metrics, "AdapterCatalog", "success") == 1
    assert value(metrics, "lorafleet_catalog_adapters", **labels, state="valid") == 18
    assert value(metrics, "lorafleet_catalog_sync_duration_seconds", **labels) == 3.25
    assert value(metrics, "lorafleet_catalog_last_success_timestamp_seconds", **labels)

    failure[:] = [errors.StorageUnreachableError("connection refused")]
    asyncio.run(controllers.sync_catalog(state, CATALOG_BODY, LOGGER))
    failure[:] = [KubeApiError(500, "etcd timed out")]
    asyncio.run(controllers.sync_catalog(state, CATALOG_BODY, LOGGER))
    failures = "lorafleet_catalog_sync_failures_total"
    assert value(metrics, failures, **labels, reason="StorageUnreachable") == 1
    assert value(metrics, failures, **labels, reason="ApiError") == 1
    assert reconciles(metrics, "AdapterCatalog", "storage_error") == 1
    assert reconciles(metrics, "AdapterCatalog", "api_error") == 1
    # The last good sync's figures stay, as they do in the catalog's status.
    assert value(metrics, "lorafleet_catalog_adapters", **labels, state="valid") == 18
    assert state.kube.events == ["StorageUnreachable", "ApiError"]  # type: ignore[attr-defined]

    # A bug is counted as a crash and still reaches the caller (the loop logs it).
    failure[:] = [KeyError("status")]
    with pytest.raises(KeyError):
        asyncio.run(controllers.sync_catalog(state, CATALOG_BODY, LOGGER))
    assert reconciles(metrics, "AdapterCatalog", "crash") == 1
    assert value(metrics, failures, **labels, reason="Crash") == 1
    assert durations(metrics, "AdapterCatalog")[0] == 4

    # The DELETED event takes every series of the catalog away; counts by kind stay.
    asyncio.run(controllers.catalog_deleted(state, CATALOG_BODY))
    assert catalog_series(metrics, "team-a", "support") == []
    assert reconciles(metrics, "AdapterCatalog", "success") == 1


def test_a_loramodel_reconcile_is_counted_by_result_and_cancellation_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = connected_state()
    body = {"metadata": {"namespace": "team-a", "name": "qwen"}}
    behaviour: list[Any] = [errors.InvalidSpecError("maxLoras must be at least 1")]

    async def fake_reconcile(*_: Any, **__: Any) -> Any:
        if isinstance(behaviour[0], BaseException):
            raise behaviour[0]
        return behaviour[0]

    monkeypatch.setattr(controllers, "reconcile_loramodel", fake_reconcile)
    with pytest.raises(errors.InvalidSpecError):
        asyncio.run(controllers.reconcile_model(state, body, LOGGER))
    assert reconciles(state.metrics, "LoRAModel", "invalid_spec") == 1

    behaviour[:] = [asyncio.CancelledError()]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(controllers.reconcile_model(state, body, LOGGER))
    assert durations(state.metrics, "LoRAModel")[0] == 1

    behaviour[:] = [RuntimeError("bug")]
    asyncio.run(controllers.reconcile_model_quietly(state, body, LOGGER))
    assert reconciles(state.metrics, "LoRAModel", "crash") == 1


# ---------------------------------------------------------------- the endpoint
def test_the_endpoint_serves_metrics_and_a_taken_port_is_a_clear_error() -> None:
    metrics = OperatorMetrics(process_collectors=False)
    metrics.reconciled("LoRAModel", 0.01)
    server = metrics.serve("127.0.0.1", 0)
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'lorafleet_operator_reconciles_total{kind="LoRAModel",result="success"} 1.0' in text
        with pytest.raises(MetricsEndpointError, match=rf"127\.0\.0\.1:{port}: .*in use"):
            OperatorMetrics(process_collectors=False).serve("127.0.0.1", port)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("0.0.0.0:9090", ("0.0.0.0", 9090)),
        ("localhost:8081", ("localhost", 8081)),
        ("[::]:9090", ("::", 9090)),
        (":9090", ("0.0.0.0", 9090)),
    ],
)
def test_metrics_addresses_that_are_accepted(address: str, expected: tuple[str, int]) -> None:
    assert split_host_port(address) == expected
    assert OperatorConfig(metrics_address=address).metrics_endpoint == expected


@pytest.mark.parametrize(
    "address", ["9090", "0.0.0.0", "host:http", "host:0", "host:70000", "::1:9090"]
)
def test_a_bad_metrics_address_is_refused_before_anything_starts(address: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|brackets"):
        split_host_port(address)
    result = CliRunner().invoke(main, ["operator", f"--metrics-address={address}"])
    assert result.exit_code == 2
    assert "--metrics-address" in result.output


def test_no_metrics_address_means_no_endpoint() -> None:
    assert OperatorConfig().metrics_endpoint is None
