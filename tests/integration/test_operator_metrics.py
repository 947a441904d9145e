"""Prometheus scrapes the operator (``--metrics-address``) and sees what the objects' status
says: a catalog's adapter counts, when it last synced, its failures by reason, and
reconciles that grew; a deleted catalog's series disappear; and an operator whose metrics
port is taken does not start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lorafleet_testbed.adapter_trees import (
    MAX_ADAPTER_SIZE,
    TINY_MODEL_ID,
    VALID_ADAPTERS,
    VALID_FOLDERS,
    build_real_adapters,
    write_catalog_tree,
)
from lorafleet_testbed.controlplane import ControlPlane

from .conftest import OperatorProcess, condition, eventually, get_json

NAMESPACE = "op-metrics"
CATALOG = "folder"
BROKEN = "missing-folder"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(operator: OperatorProcess) -> tuple[str, Samples]:
    """The exposition text and {(sample name, labels): value}."""
    with urllib.request.urlopen(operator.metrics_url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def reconciles(samples: Samples, kind: str, result: str) -> float:
    found = sample(samples, "lorafleet_operator_reconciles_total", kind=kind, result=result)
    assert found is not None, f"no reconcile counter for {kind}/{result}"
    return found


def catalog_samples(samples: Samples, catalog: str) -> list[str]:
    return [
        name
        for name, labels in samples
        if ("namespace", NAMESPACE) in labels and ("catalog", catalog) in labels
    ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    """A mounted folder of adapters: real ones, broken ones, stray files."""
    adapters = build_real_adapters(tmp_path_factory.getbasetemp() / "tiny-lora")
    root = tmp_path_factory.mktemp("metrics-catalog") / "loras"
    return root, write_catalog_tree(root, adapters)


@pytest.fixture(scope="module")
def namespace(control_plane: ControlPlane) -> str:
    control_plane.kubectl("create", "namespace", NAMESPACE)
    return NAMESPACE


def _apply(plane: ControlPlane, obj: dict[str, Any]) -> None:
    plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", input_text=json.dumps(obj))


def _catalog(name: str, uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "AdapterCatalog",
        "metadata": {"name": name},
        "spec": {
            "source": {"uri": uri},
            "baseModel": TINY_MODEL_ID,
            "maxAdapterSize": MAX_ADAPTER_SIZE,
            "syncInterval": "10s",
        },
    }


def test_catalog_figures_failures_and_reconciles_match_what_the_cluster_says(
    control_plane: ControlPlane,
    lorafleet_operator: OperatorProcess,
    folder: tuple[Path, dict[str, str | None]],
    namespace: str,
) -> None:
    root, expected = folder
    _, before = scrape(lorafleet_operator)
    models_before = reconciles(before, "LoRAModel", "success")

    _apply(control_plane, _catalog(CATALOG, f"file://{root}"))
    _apply(control_plane, _catalog(BROKEN, f"file://{root.parent}/no-such-folder"))
    _apply(
        control_plane,
        {
            "apiVersion": "lorafleet.dev/v1alpha1",
            "kind": "LoRAModel",
            "metadata": {"name": "tiny"},
            "spec": {"baseModel": {"source": TINY_MODEL_ID}, "catalogs": [{"name": CATALOG}]},
        },
    )
    catalog = eventually(
        lambda: (
            (c := get_json(control_plane, "adaptercatalogs", CATALOG, "-n", NAMESPACE))
            and condition(c, "Ready").get("reason") == "Synced"
            and c
        ),
        what="the folder catalog Ready",
    )
    counts = catalog["status"]["counts"]
    assert counts["found"] == len(expected)
    assert counts["valid"] == VALID_FOLDERS
    eventually(
        lambda: (
            condition(
                get_json(control_plane, "adaptercatalogs", BROKEN, "-n", NAMESPACE), "Ready"
            ).get("reason")
            == "NotFound"
        ),
        what="the catalog of a missing folder NotFound",
    )
    eventually(
        lambda: (
            get_json(control_plane, "loramodel", "tiny", "-n", NAMESPACE)
            .get("status", {})
            .get("rayServiceName")
        ),
        what="the LoRAModel reconciled",
    )

    def scraped_after_sync() -> tuple[str, Samples] | None:
        text, samples = scrape(lorafleet_operator)
        found = sample(
            samples,
            "lorafleet_catalog_adapters",
            namespace=NAMESPACE,
            catalog=CATALOG,
            state="found",
        )
        failures = sample(
            samples,
            "lorafleet_catalog_sync_failures_total",
            namespace=NAMESPACE,
            catalog=BROKEN,
            reason="NotFound",
        )
        models = reconciles(samples, "LoRAModel", "success")
        return (text, samples) if found and failures and models > models_before else None

    text, samples = eventually(scraped_after_sync, what="the syncs and the reconcile in /metrics")
    # Later syncs of the unchanged folder find the same counts.
    counts = get_json(control_plane, "adaptercatalogs", CATALOG, "-n", NAMESPACE)["status"]
    counts = counts["counts"]
    for state in ("found", "valid", "invalid"):
        assert (
            sample(
                samples,
                "lorafleet_catalog_adapters",
                namespace=NAMESPACE,
                catalog=CATALOG,
                state=state,
            )
            == counts[state]
        ), state
    last_success = sample(
        samples,
        "lorafleet_catalog_last_success_timestamp_seconds",
        namespace=NAMESPACE,
        catalog=CATALOG,
    )
    assert last_success is not None
    assert time.time() - 120 < last_success <= time.time() + 1
    duration = sample(
        samples, "lorafleet_catalog_sync_duration_seconds", namespace=NAMESPACE, catalog=CATALOG
    )
    assert duration is not None
    assert 0 < duration < 60
    assert reconciles(samples, "AdapterCatalog", "success") >= 1
    assert reconciles(samples, "AdapterCatalog", "storage_error") >= 1
    count = sample(samples, "lorafleet_operator_reconcile_duration_seconds_count", kind="LoRAModel")
    assert count is not None
    assert count >= reconciles(samples, "LoRAModel", "success")
    # The missing folder never synced: it has failures, no figures.
    assert (
        sample(
            samples,
            "lorafleet_catalog_adapters",
            namespace=NAMESPACE,
            catalog=BROKEN,
            state="found",
        )
        is None
    )
    assert sample(samples, "process_resident_memory_bytes") is not None
    # No URI, path or adapter name in any label.
    assert str(root) not in text
    assert "no-such-folder" not in text
    for adapter in VALID_ADAPTERS:
        assert adapter not in text


def test_a_deleted_catalog_leaves_no_series_behind(
    control_plane: ControlPlane,
    lorafleet_operator: OperatorProcess,
    folder: tuple[Path, dict[str, str | None]],
    namespace: str,
) -> None:
    root, _ = folder
    synced, broken = "doomed-folder", "doomed-missing"
    _apply(control_plane, _catalog(synced, f"file://{root}"))
    _apply(control_plane, _catalog(broken, f"file://{root.parent}/no-such-folder"))

    def present() -> bool:
        _, now = scrape(lorafleet_operator)
        return bool(catalog_samples(now, synced) and catalog_samples(now, broken))

    eventually(present, what="series for both catalogs")
    control_plane.kubectl("delete", "adaptercatalog", synced, broken, "-n", NAMESPACE)

    def gone() -> bool:
        _, now = scrape(lorafleet_operator)
        return not catalog_samples(now, synced) and not catalog_samples(now, broken)

    eventually(gone, what="the deleted catalogs' series removed")
    # Counters by kind stay: they are the operator's history, not the catalog's.
    _, samples = scrape(lorafleet_operator)
    assert reconciles(samples, "AdapterCatalog", "success") >= 1


def test_an_operator_whose_metrics_port_is_taken_does_not_start(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "lorafleet_cli.main",
                "operator",
                "--liveness=none",
                f"--metrics-address=127.0.0.1:{port}",
            ],
            env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in result.stderr
