"""The local control plane is a real Kubernetes API: schema validation, RBAC, service-account
tokens and garbage collection all behave as in a cluster."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from lorafleet_testbed.controlplane import KUBERAY_CRD_DIR, ControlPlane

SAMPLES = KUBERAY_CRD_DIR.parent / "samples"
LLM_SAMPLE = SAMPLES / "ray-service.llm-serve.yaml"


def _sample_rayservice() -> dict[str, Any]:
    """The RayService document of KubeRay's LLM sample (the file also holds a Secret)."""
    docs = yaml.safe_load_all(LLM_SAMPLE.read_text())
    return next(d for d in docs if d and d["kind"] == "RayService")


def _wait_gone(plane: ControlPlane, *args: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if plane.kubectl("get", *args, check=False).returncode != 0:
            return True
        time.sleep(0.5)
    return False


def test_apiserver_is_ready_and_serves_kuberay_kinds(control_plane: ControlPlane) -> None:
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    resources = control_plane.kubectl("api-resources", "--api-group=ray.io", "-o", "name").stdout
    assert set(resources.split()) >= {"rayservices.ray.io", "rayclusters.ray.io", "rayjobs.ray.io"}


def test_kuberay_llm_sample_round_trips(control_plane: ControlPlane) -> None:
    # The whole file, as a user would apply it (a RayService and the Secret it reads).
    sent = _sample_rayservice()
    control_plane.kubectl("create", "namespace", "sample-roundtrip")
    control_plane.kubectl("apply", "--server-side", "-n", "sample-roundtrip", "-f", str(LLM_SAMPLE))
    got = json.loads(
        control_plane.kubectl(
            "get", "rayservice", sent["metadata"]["name"], "-n", "sample-roundtrip", "-o", "json"
        ).stdout
    )
    assert got["spec"]["serveConfigV2"] == sent["spec"]["serveConfigV2"]
    head = got["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert (
        head["rayStartParams"]
        == sent["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    )
    assert (
        head["template"]["spec"]["containers"][0]["image"]
        == "rayproject/ray-llm:2.52.0-py311-cu128"
    )


def test_rayservice_without_cluster_config_is_rejected(control_plane: ControlPlane) -> None:
    bad = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "no-cluster", "namespace": "default"},
        "spec": {"serveConfigV2": "applications: []"},
    }
    result = control_plane.kubectl(
        "apply", "--server-side", "-f", "-", input_text=json.dumps(bad), check=False
    )
    assert result.returncode != 0
    assert "spec.rayClusterConfig: Required value" in result.stderr
    assert control_plane.kubectl("get", "rayservice", "no-cluster", check=False).returncode != 0


def test_rayservice_with_wrong_type_is_rejected(control_plane: ControlPlane) -> None:
    bad = _sample_rayservice()
    bad["metadata"] = {"name": "wrong-type", "namespace": "default"}
    bad["spec"]["excludeHeadPodFromServeSvc"] = "yes please"
    result = control_plane.kubectl(
        "apply", "--server-side", "-f", "-", input_text=json.dumps(bad), check=False
    )
    assert result.returncode != 0
    assert "spec.excludeHeadPodFromServeSvc" in result.stderr
    assert "expected boolean" in result.stderr


def test_rbac_is_enforced_for_service_account_tokens(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    ns = "rbac-check"
    control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("create", "serviceaccount", "reader", "-n", ns)
    token = control_plane.kubectl("create", "token", "reader", "-n", ns).stdout.strip()
    reader_config = control_plane.kubeconfig_for_token(token, tmp_path / "reader.kubeconfig")
    as_reader = (f"--kubeconfig={reader_config}", "-n", ns)

    denied = control_plane.kubectl("get", "rayservices", *as_reader, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr
    assert f"system:serviceaccount:{ns}:reader" in denied.stderr

    control_plane.kubectl(
        "create",
        "role",
        "read-rayservices",
        "-n",
        ns,
        "--verb=get,list",
        "--resource=rayservices.ray.io",
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "reader-reads",
        "-n",
        ns,
        "--role=read-rayservices",
        f"--serviceaccount={ns}:reader",
    )
    deadline = time.monotonic() + 30
    while True:
        allowed = control_plane.kubectl("get", "rayservices", *as_reader, check=False)
        if allowed.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert allowed.returncode == 0, allowed.stderr
    # Still nothing beyond the role.
    assert control_plane.kubectl("get", "secrets", *as_reader, check=False).returncode != 0


def test_deleting_an_owner_garbage_collects_its_child(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    ns = "gc-check"
    control_plane.kubectl("create", "namespace", ns)
    owner = _sample_rayservice()
    owner["metadata"] = {"name": "owner", "namespace": ns}
    control_plane.kubectl("apply", "--server-side", "-f", "-", input_text=json.dumps(owner))
    uid = control_plane.kubectl(
        "get", "rayservice", "owner", "-n", ns, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": ns,
            "ownerReferences": [
                {
                    "apiVersion": "ray.io/v1",
                    "kind": "RayService",
                    "name": "owner",
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"k": "v"},
    }
    orphan = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "unowned", "namespace": ns},
        "data": {"k": "v"},
    }
    for obj in (child, orphan):
        control_plane.kubectl("apply", "--server-side", "-f", "-", input_text=json.dumps(obj))

    control_plane.kubectl("delete", "rayservice", "owner", "-n", ns, "--wait=false")
    assert _wait_gone(control_plane, "configmap", "child", "-n", ns), (
        "the garbage collector did not delete the owned ConfigMap"
    )
    assert control_plane.kubectl("get", "configmap", "unowned", "-n", ns).returncode == 0
