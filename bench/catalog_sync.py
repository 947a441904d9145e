"""Catalog sync at scale: N adapters (copies of one real PEFT adapter) in the S3-compatible
server, synced by the operator running against a real local control plane. Reports the first
full sync, an incremental re-sync with nothing changed, a re-sync after one adapter changed,
and the operator's peak RSS. Prints a table and writes JSON to bench/out/catalog_sync.json.

    .venv/bin/python bench/catalog_sync.py             # N=10,000 (the issue's targets)
    .venv/bin/python bench/catalog_sync.py -n 2000

Targets from the issue: full sync <= 10 s, incremental <= 2 s, RSS <= 300 MB.
Sync times are the operator's own (status.lastSyncDurationSeconds: listing, config reads,
validation, index ConfigMap writes); "until Ready" adds kopf's reaction and our polling.
Reference: Ray Serve LLM lists at most 1,000 adapter folders and reads their configs one at
a time; the serial figure below times exactly that for 1,000 configs on the same server.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lorafleet_testbed.adapter_trees import build_real_adapters, upload_s3
from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.operators import LorafleetOperator
from lorafleet_testbed.storage import MinioServer

OUT = Path(__file__).parent / "out"
NAMESPACE = "bench"
CATALOG = "bench"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _catalog(plane: ControlPlane) -> dict[str, Any]:
    out = plane.kubectl("get", "adaptercatalog", CATALOG, "-n", NAMESPACE, "-o", "json")
    return dict(json.loads(out.stdout))


def _wait_synced(plane: ControlPlane, after: str | None, timeout: float = 600) -> dict[str, Any]:
    """The catalog once a sync newer than ``after`` (a lastSyncTime + duration pair) landed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _catalog(plane).get("status", {})
        marker = f"{status.get('lastSyncTime')}/{status.get('lastSyncDurationSeconds')}"
        ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        if ready and ready[0]["status"] == "True" and marker != after:
            return status
        time.sleep(0.2)
    raise TimeoutError("the catalog did not sync")


def _marker(status: dict[str, Any]) -> str:
    return f"{status.get('lastSyncTime')}/{status.get('lastSyncDurationSeconds')}"


def _request_sync(plane: ControlPlane) -> None:
    plane.kubectl(
        "annotate",
        "adaptercatalog",
        CATALOG,
        "-n",
        NAMESPACE,
        f"lorafleet.dev/sync-requested={time.time_ns()}",
        "--overwrite",
    )


def run(n: int, work: Path) -> dict[str, Any]:
    adapter = build_real_adapters(work / "tiny-lora")["support-v1"]
    files = [
        (f"adapter-{i:05d}/{path.name}", path)
        for i in range(n)
        for path in (adapter / "adapter_config.json", adapter / "adapter_model.safetensors")
    ]
    minio = MinioServer()
    minio.start()
    try:
        s3: Any = minio.s3_client()
        s3.create_bucket(Bucket="bench")
        started = time.monotonic()
        upload_s3(s3, "bench", "loras/", files)
        upload_seconds = time.monotonic() - started

        # The reference: one listing page of 1,000 folders, then one config read at a time.
        started = time.monotonic()
        page = s3.list_objects_v2(Bucket="bench", Prefix="loras/", Delimiter="/", MaxKeys=1000)
        for prefix in page.get("CommonPrefixes", []):
            s3.get_object(Bucket="bench", Key=prefix["Prefix"] + "adapter_config.json")[
                "Body"
            ].read()
        serial_1000_seconds = time.monotonic() - started

        with ControlPlane.start() as plane:
            plane.kubectl("create", "namespace", NAMESPACE)
            secret = {
                "AWS_ACCESS_KEY_ID": minio.access_key,
                "AWS_SECRET_ACCESS_KEY": minio.secret_key,
            }
            plane.kubectl(
                "apply",
                "-n",
                NAMESPACE,
                "-f",
                "-",
                input_text=json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": "minio"},
                        "data": {
                            k: base64.b64encode(v.encode()).decode() for k, v in secret.items()
                        },
                    }
                ),
            )
            logs = OUT / "catalog_sync-logs"
            shutil.rmtree(logs, ignore_errors=True)  # the sync log lines below are this run's
            operator = LorafleetOperator(plane.kubeconfig, logs)
            operator.start()
            assert operator.proc is not None
            pid = operator.proc.pid
            try:
                idle_rss = _peak_rss_mb(pid)
                catalog = {
                    "apiVersion": "lorafleet.dev/v1alpha1",
                    "kind": "AdapterCatalog",
                    "metadata": {"name": CATALOG},
                    "spec": {
                        "source": {
                            "uri": "s3://bench/loras",
                            "endpoint": minio.endpoint,
                            "credentialsSecretRef": {"name": "minio"},
                        },
                        "baseModel": "lorafleet/tiny-qwen2",
                        "syncInterval": "1h",
                    },
                }
                started = time.monotonic()
                plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", input_text=json.dumps(catalog))
                full = _wait_synced(plane, None)
                until_ready = time.monotonic() - started
                assert full["counts"]["valid"] == n, full["counts"]

                _request_sync(plane)
                incremental = _wait_synced(plane, _marker(full))

                s3.put_object(
                    Bucket="bench",
                    Key="loras/adapter-00042/adapter_config.json",
                    Body=json.dumps(
                        {**json.loads((adapter / "adapter_config.json").read_text()), "r": 16}
                    ).encode(),
                )
                _request_sync(plane)
                one_changed = _wait_synced(plane, _marker(incremental))
                assert one_changed["rankHistogram"] == {"8": n - 1, "16": 1}, one_changed[
                    "rankHistogram"
                ]
                peak_rss = _peak_rss_mb(pid)
                phases = [
                    line.split("Synced AdapterCatalog", 1)[1].strip()
                    for line in operator.log_text().splitlines()
                    if "Synced AdapterCatalog" in line
                ]
                shards = full["index"]["shards"]
                sizes = [
                    len(
                        json.dumps(
                            json.loads(
                                plane.kubectl(
                                    "get", "configmap", name, "-n", NAMESPACE, "-o", "json"
                                ).stdout
                            )["data"]
                        )
                    )
                    for name in [f"lorafleet-catalog.{CATALOG}"]
                    + [f"lorafleet-catalog.{CATALOG}.{i}" for i in range(shards)]
                ]
            finally:
                operator.stop()
    finally:
        minio.close()
    return {
        "adapters": n,
        "objects": len(files),
        "upload_seconds": round(upload_seconds, 1),
        "full_sync_seconds": full["lastSyncDurationSeconds"],
        "full_sync_until_ready_seconds": round(until_ready, 2),
        "incremental_sync_seconds": incremental["lastSyncDurationSeconds"],
        "one_changed_sync_seconds": one_changed["lastSyncDurationSeconds"],
        "index_shards": shards,
        "largest_configmap_bytes": max(sizes),
        "operator_idle_rss_mb": round(idle_rss, 1),
        "operator_peak_rss_mb": round(peak_rss, 1),
        "reference_serial_1000_configs_seconds": round(serial_1000_seconds, 2),
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "operator_sync_log": phases,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--adapters", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-") as work:
        result = run(args.adapters, Path(work))
    OUT.mkdir(exist_ok=True)
    (OUT / "catalog_sync.json").write_text(json.dumps(result, indent=2) + "\n")
    targets = {
        "full_sync_seconds": 10.0,
        "incremental_sync_seconds": 2.0,
        "operator_peak_rss_mb": 300.0,
    }
    width = max(len(k) for k in result)
    print(f"{'metric':<{width}}  {'value':>10}  target")
    for key, value in result.items():
        if isinstance(value, list):
            for line in value:
                print(f"  {line}")
            continue
        target = targets.get(key)
        verdict = "" if target is None else f"<= {target:g} {'ok' if value <= target else 'MISSED'}"
        print(f"{key:<{width}}  {value:>10}  {verdict}")
    missed = [k for k, t in targets.items() if result[k] > t]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
