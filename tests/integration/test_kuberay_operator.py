"""The real KubeRay operator (the pinned build) runs against the local control plane: it
reconciles KubeRay's own LLM sample, and it accepts the RayService lorafleet renders, deriving
the RayCluster, head pod and worker pods we asked for (pods never start here: no kubelet)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from lorafleet_testbed.controlplane import KUBERAY_CRD_DIR, ControlPlane
from lorafleet_testbed.operators import KubeRayOperator
from lorafleet_testbed.toolchain import REPO_ROOT

from .conftest import OperatorProcess, eventually, get_json


@pytest.fixture(scope="module")
def kuberay(control_plane: ControlPlane) -> Iterator[KubeRayOperator]:
    operator = KubeRayOperator(control_plane.kubeconfig, control_plane.data_dir / "logs")
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def test_kuberay_creates_a_raycluster_for_the_llm_sample(
    control_plane: ControlPlane, kuberay: KubeRayOperator
) -> None:
    ns = "kuberay-sample"
    control_plane.kubectl("create", "namespace", ns)
    sample = KUBERAY_CRD_DIR.parent / "samples" / "ray-service.llm-serve.yaml"
    service = next(
        d for d in yaml.safe_load_all(sample.read_text()) if d and d["kind"] == "RayService"
    )
    control_plane.kubectl("apply", "--server-side", "-n", ns, "-f", str(sample))

    deadline = time.monotonic() + 90
    clusters: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not clusters:
        clusters = get_json(control_plane, "rayclusters", "-n", ns).get("items", [])
        time.sleep(1)
    assert clusters, f"KubeRay created no RayCluster; operator log:\n{kuberay.log_text()[-3000:]}"
    cluster = clusters[0]
    owner = cluster["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("RayService", service["metadata"]["name"])
    workers = cluster["spec"]["workerGroupSpecs"]
    assert [w["groupName"] for w in workers] == ["gpu-group"]

    rayservice = get_json(control_plane, "rayservice", service["metadata"]["name"], "-n", ns)
    reasons = {c["reason"] for c in rayservice.get("status", {}).get("conditions", [])}
    assert "ValidationFailed" not in reasons


def test_kuberay_accepts_the_rayservice_lorafleet_renders(
    control_plane: ControlPlane, kuberay: KubeRayOperator, lorafleet_operator: OperatorProcess
) -> None:
    ns = "kuberay-lorafleet"
    control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("apply", "-n", ns, "-f", str(REPO_ROOT / "examples" / "lora-model.yaml"))
    rs_name = eventually(
        lambda: (
            get_json(control_plane, "loramodel", "qwen", "-n", ns)
            .get("status", {})
            .get("rayServiceName")
        ),
        what="the LoRAModel status",
    )
    cluster = eventually(
        lambda: next(iter(get_json(control_plane, "rayclusters", "-n", ns).get("items", [])), None),
        timeout=90,
        what=f"KubeRay to create a RayCluster; log:\n{kuberay.log_text()[-2000:]}",
    )
    assert cluster["metadata"]["ownerReferences"][0]["name"] == rs_name

    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    (worker,) = cluster["spec"]["workerGroupSpecs"]
    assert worker["groupName"] == "llm"
    assert (worker["minReplicas"], worker["maxReplicas"]) == (1, 4)
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] in (1, "1")

    pods = eventually(
        lambda: (
            (items := get_json(control_plane, "pods", "-n", ns).get("items", []))
            and len(items) >= 2
            and items
        ),
        timeout=90,
        what="KubeRay to create head and worker pods",
    )
    by_type = {p["metadata"]["labels"].get("ray.io/node-type"): p for p in pods}
    head_ports = {
        p["name"]: p["containerPort"] for p in by_type["head"]["spec"]["containers"][0]["ports"]
    }
    assert head_ports == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "serve": 8000,
        "metrics": 8080,
    }
    assert (
        by_type["worker"]["spec"]["containers"][0]["image"]
        == by_type["head"]["spec"]["containers"][0]["image"]
    )
    worker_env = {e["name"] for e in by_type["worker"]["spec"]["containers"][0].get("env", [])}
    assert "HF_TOKEN" in worker_env

    rayservice = get_json(control_plane, "rayservice", rs_name, "-n", ns)
    reasons = {c.get("reason") for c in rayservice.get("status", {}).get("conditions", [])}
    assert "ValidationFailed" not in reasons, rayservice.get("status")
