"""Reconcile throughput: create N LoRAModels on a real local control plane and time how long
the operator takes until every one has its RayService and a written status; report the
operator's peak RSS. Prints a table and writes JSON to bench/out/reconcile.json.

    .venv/bin/python bench/reconcile.py            # N=200 (the target: <= 30 s, <= 250 MB)
    .venv/bin/python bench/reconcile.py -n 50

Targets from the issue: 200 LoRAModels in <= 30 s, operator peak RSS <= 250 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.operators import LorafleetOperator

OUT = Path(__file__).parent / "out"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _count(plane: ControlPlane, ns: str) -> tuple[int, int]:
    # Names and one status field only: polling must not steal the CPU it is measuring.
    services = plane.kubectl("get", "rayservices", "-n", ns, "-o", "name").stdout.split()
    statuses = plane.kubectl(
        "get", "loramodels", "-n", ns, "-o", "jsonpath={.items[*].status.rayServiceName}"
    ).stdout.split()
    return len(services), len(statuses)


def run(n: int) -> dict[str, Any]:
    with ControlPlane.start() as plane:
        ns = "bench"
        plane.kubectl("create", "namespace", ns)
        operator = LorafleetOperator(plane.kubeconfig, plane.data_dir / "logs")
        operator.start()
        assert operator.proc is not None
        pid = operator.proc.pid
        try:
            idle_rss = _peak_rss_mb(pid)
            docs = [
                json.dumps(
                    {
                        "apiVersion": "lorafleet.dev/v1alpha1",
                        "kind": "LoRAModel",
                        "metadata": {"name": f"model-{i:04d}", "namespace": ns},
                        "spec": {
                            "baseModel": {"source": "Qwen/Qwen2.5-0.5B-Instruct"},
                            "engine": {"maxLoras": 1 + i % 8},
                            "replicas": {"min": 1, "max": 1 + i % 4},
                        },
                    }
                )
                for i in range(n)
            ]
            start = time.monotonic()
            # One kubectl call per 50 objects: the creation itself should not be the bottleneck.
            for chunk in range(0, n, 50):
                plane.kubectl("create", "-f", "-", input_text="\n".join(docs[chunk : chunk + 50]))
            created = time.monotonic() - start
            services = with_status = 0
            applied_at = None
            while time.monotonic() - start < 600:
                services, with_status = _count(plane, ns)
                if services == n and applied_at is None:
                    applied_at = time.monotonic() - start
                if services == n and with_status == n:
                    break
                time.sleep(1)
            done = time.monotonic() - start
            peak = _peak_rss_mb(pid)
            cpu = _cpu_seconds(pid)
        finally:
            operator.stop()
    return {
        "loramodels": n,
        "create_seconds": round(created, 2),
        "all_rayservices_applied_seconds": round(applied_at, 2) if applied_at else None,
        "all_statuses_written_seconds": round(done, 2),
        "rayservices": services,
        "statuses": with_status,
        "operator_idle_rss_mb": round(idle_rss, 1),
        "operator_peak_rss_mb": round(peak, 1),
        "operator_cpu_seconds": round(cpu, 1),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="LoRAModels to create")
    args = parser.parse_args()
    result = run(args.n)
    width = max(len(k) for k in result)
    print(f"{'metric':<{width}}  value")
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    OUT.mkdir(exist_ok=True)
    (OUT / "reconcile.json").write_text(json.dumps(result, indent=2) + "\n")
    ok = result["rayservices"] == args.n and result["statuses"] == args.n
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
