"""The pinned KubeRay operator runs against the local control plane and reconciles KubeRay's own
LLM sample: the RayService gets a RayCluster with KubeRay's head pod (pods never start here:
there is no kubelet)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from lorafleet_testbed.controlplane import KUBERAY_CRD_DIR, ControlPlane
from lorafleet_testbed.kuberay import KubeRayOperator


@pytest.fixture(scope="module")
def kuberay(control_plane: ControlPlane) -> Iterator[KubeRayOperator]:
    operator = KubeRayOperator(control_plane.kubeconfig, control_plane.data_dir / "logs")
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def _get_json(plane: ControlPlane, *args: str) -> dict[str, Any]:
    result = plane.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


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
        clusters = _get_json(control_plane, "rayclusters", "-n", ns).get("items", [])
        time.sleep(1)
    assert clusters, f"KubeRay created no RayCluster; operator log:\n{kuberay.log_text()[-3000:]}"
    cluster = clusters[0]
    owner = cluster["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("RayService", service["metadata"]["name"])
    workers = cluster["spec"]["workerGroupSpecs"]
    assert [w["groupName"] for w in workers] == ["gpu-group"]

    rayservice = _get_json(control_plane, "rayservice", service["metadata"]["name"], "-n", ns)
    reasons = {c["reason"] for c in rayservice.get("status", {}).get("conditions", [])}
    assert "ValidationFailed" not in reasons
