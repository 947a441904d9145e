"""A user applies a LoRAModel and the operator, running against a real API server, keeps a
correct RayService and an honest status. KubeRay is not running in this module: the tests
write RayService status the way KubeRay does."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.toolchain import REPO_ROOT

from .conftest import (
    KillOnEvent,
    OperatorProcess,
    apply_in,
    condition,
    eventually,
    get_json,
    rayservice_for,
    tamper_rayservice,
)

EXAMPLE = REPO_ROOT / "examples" / "lora-model.yaml"


def _namespace(plane: ControlPlane, name: str) -> str:
    plane.kubectl("create", "namespace", name)
    return name


def _serve_args(rayservice: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    return dict(app["args"])


def _kuberay_status(
    rayservice: dict[str, Any],
    *,
    app_status: str = "RUNNING",
    message: str = "",
    endpoints: int = 1,
    ready: bool = True,
) -> dict[str, Any]:
    """A RayService status as KubeRay v1.7 writes it once Serve is (or is not) running."""
    now = "2026-11-22T10:00:00Z"
    return {
        "observedGeneration": rayservice["metadata"]["generation"],
        "numServeEndpoints": endpoints,
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints",
                "message": "",
                "lastTransitionTime": now,
            },
            {
                "type": "UpgradeInProgress",
                "status": "False",
                "reason": "NoPendingCluster",
                "message": "",
                "lastTransitionTime": now,
            },
        ],
        "activeServiceStatus": {
            "rayClusterName": rayservice["metadata"]["name"] + "-abcde",
            "applicationStatuses": {
                "lorafleet": {
                    "status": app_status,
                    "message": message,
                    "serveDeploymentStatuses": {
                        "LLMServer": {
                            "status": "HEALTHY" if app_status == "RUNNING" else "UNHEALTHY",
                            "message": message,
                        },
                    },
                },
            },
        },
    }


def _patch_rayservice_status(
    plane: ControlPlane, rs: dict[str, Any], status: dict[str, Any]
) -> None:
    plane.kubectl(
        "patch",
        "rayservice",
        rs["metadata"]["name"],
        "-n",
        rs["metadata"]["namespace"],
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def test_example_becomes_a_rayservice_and_edits_follow(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess
) -> None:
    ns = _namespace(control_plane, "op-example")
    apply_in(control_plane, EXAMPLE, ns)
    rs = eventually(lambda: rayservice_for(control_plane, ns, "qwen"), what="the RayService")
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "LoRAModel"
    assert rs["spec"]["serveService"]["metadata"]["name"] == "qwen"
    assert _serve_args(rs)["engine"]["max_loras"] == 8

    model = eventually(
        lambda: (
            (m := get_json(control_plane, "loramodel", "qwen", "-n", ns))
            .get("status", {})
            .get("endpoint")
            and m
        ),
        what="LoRAModel status",
    )
    assert model["status"]["endpoint"] == f"http://qwen.{ns}.svc:8000/v1"
    assert model["status"]["rayServiceName"] == rs["metadata"]["name"]
    assert condition(model, "Ready")["status"] == "False"
    # The example's catalog does not exist in this namespace: say so, by name.
    assert condition(model, "Degraded")["reason"] == "CatalogNotFound"
    assert "support-adapters" in condition(model, "Degraded")["message"]
    events = control_plane.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=qwen", "-o", "json"
    ).stdout
    assert any(e["reason"] == "Applied" for e in json.loads(events)["items"])

    control_plane.kubectl(
        "patch",
        "loramodel",
        "qwen",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"engine": {"maxLoras": 12, "maxCpuLoras": 32}}}',
    )
    edited = eventually(
        lambda: (
            (r := rayservice_for(control_plane, ns, "qwen"))
            and _serve_args(r)["engine"]["max_loras"] == 12
            and r
        ),
        what="the edit to reach the RayService",
    )
    assert edited["metadata"]["name"] == rs["metadata"]["name"]


def test_reapplying_the_same_spec_writes_nothing(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess
) -> None:
    ns = _namespace(control_plane, "op-noop")
    apply_in(control_plane, EXAMPLE, ns)
    rs = eventually(lambda: rayservice_for(control_plane, ns, "qwen"), what="the RayService")
    eventually(
        lambda: (
            get_json(control_plane, "loramodel", "qwen", "-n", ns)
            .get("status", {})
            .get("observedGeneration")
        ),
        what="status",
    )
    before = rs["metadata"]["resourceVersion"]
    apply_in(control_plane, EXAMPLE, ns)
    # An annotation edit makes kopf run the update handler: a reconcile with nothing to do.
    control_plane.kubectl("annotate", "loramodel", "qwen", "-n", ns, "touched=1")
    eventually(
        lambda: _handled_after_touch(control_plane, ns),
        timeout=30,
        what="the operator to handle the touched LoRAModel",
    )
    after = rayservice_for(control_plane, ns, "qwen")
    assert after["metadata"]["resourceVersion"] == before


def _handled_after_touch(plane: ControlPlane, ns: str, name: str = "qwen") -> bool:
    model = get_json(plane, "loramodel", name, "-n", ns)
    last = model["metadata"].get("annotations", {}).get("lorafleet.dev/last-handled-configuration")
    return bool(last) and "touched" in last


DEPRECATED_POLICY_MESSAGE = (
    'spec.router.policy "adapter-affinity" is deprecated: it now means "lorafleet"; '
    "write policy: lorafleet (adapter-affinity was the default: objects created without a "
    "policy store it too)"
)


def _events(plane: ControlPlane, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={name},reason={reason}"
    result = plane.kubectl("get", "events", "-n", ns, "--field-selector", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def test_a_deprecated_router_policy_still_serves_and_the_user_is_told_once(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess
) -> None:
    ns = _namespace(control_plane, "op-deprecated")
    old = {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": "old", "namespace": ns},
        "spec": {
            "baseModel": {"source": "Qwen/Qwen2.5-0.5B-Instruct"},
            "router": {"policy": "adapter-affinity"},
        },
    }
    apply_in(control_plane, old, ns)
    rs = eventually(lambda: rayservice_for(control_plane, ns, "old"), what="the RayService")
    assert _serve_args(rs)["router"] == {"policy": "lorafleet"}
    model = eventually(
        lambda: (
            (m := get_json(control_plane, "loramodel", "old", "-n", ns))
            .get("status", {})
            .get("warnings")
            and m
        ),
        what="status.warnings",
    )
    assert model["status"]["warnings"] == [DEPRECATED_POLICY_MESSAGE]
    (event,) = eventually(
        lambda: _events(control_plane, ns, "old", "DeprecatedRouterPolicy"),
        what="the DeprecatedRouterPolicy Event",
    )
    assert (event["type"], event["message"]) == ("Warning", DEPRECATED_POLICY_MESSAGE)

    # Another reconcile of the same generation (kopf's update handler) tells nothing new.
    control_plane.kubectl("annotate", "loramodel", "old", "-n", ns, "touched=1")
    eventually(
        lambda: _handled_after_touch(control_plane, ns, "old"),
        timeout=30,
        what="the operator to handle the touched LoRAModel",
    )
    assert len(_events(control_plane, ns, "old", "DeprecatedRouterPolicy")) == 1

    # Writing the new name clears the warning and re-deploys nothing: the same arguments.
    control_plane.kubectl(
        "patch",
        "loramodel",
        "old",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"router": {"policy": "lorafleet"}}}',
    )
    eventually(
        lambda: (
            (status := get_json(control_plane, "loramodel", "old", "-n", ns).get("status", {})).get(
                "observedGeneration"
            )
            == 2
            and "warnings" not in status
        ),
        what="status without warnings for the edited spec",
    )
    after = rayservice_for(control_plane, ns, "old")
    assert after["metadata"]["resourceVersion"] == rs["metadata"]["resourceVersion"]
    assert len(_events(control_plane, ns, "old", "DeprecatedRouterPolicy")) == 1


def test_deleting_the_loramodel_garbage_collects_the_rayservice(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess
) -> None:
    ns = _namespace(control_plane, "op-delete")
    apply_in(control_plane, REPO_ROOT / "examples" / "lora-model-minimal.yaml", ns)
    eventually(lambda: rayservice_for(control_plane, ns, "qwen-mini"), what="the RayService")
    control_plane.kubectl("delete", "loramodel", "qwen-mini", "-n", ns)
    eventually(
        lambda: not get_json(control_plane, "rayservices", "-n", ns).get("items"),
        timeout=90,
        what="garbage collection of the RayService",
    )


def test_rayservice_status_drives_the_conditions(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess
) -> None:
    ns = _namespace(control_plane, "op-status")
    apply_in(
        control_plane,
        {
            "apiVersion": "lorafleet.dev/v1alpha1",
            "kind": "LoRAModel",
            "metadata": {"name": "base-only"},
            "spec": {"baseModel": {"source": "Qwen/Qwen2.5-0.5B-Instruct"}},
        },
        ns,
    )
    rs = eventually(lambda: rayservice_for(control_plane, ns, "base-only"), what="RayService")

    def model() -> dict[str, Any]:
        return get_json(control_plane, "loramodel", "base-only", "-n", ns)

    _patch_rayservice_status(control_plane, rs, _kuberay_status(rs))
    ready = eventually(
        lambda: condition(model(), "Ready").get("status") == "True" and model(),
        what="Ready=True once KubeRay reports RUNNING with endpoints",
    )
    assert condition(ready, "Degraded")["status"] == "False"
    assert condition(ready, "Progressing")["status"] == "False"

    gpu_message = (
        "Deployment 'LLMServer' has 1 replicas that have taken more than 30s to be "
        "scheduled. Resources required for each replica: {'GPU': 1.0}"
    )
    _patch_rayservice_status(
        control_plane,
        rs,
        _kuberay_status(
            rs, app_status="DEPLOY_FAILED", message=gpu_message, endpoints=0, ready=False
        ),
    )
    degraded = eventually(
        lambda: condition(model(), "Degraded").get("status") == "True" and model(),
        what="Degraded=True on DEPLOY_FAILED",
    )
    assert "GPU" in condition(degraded, "Degraded")["message"]
    # Debounced (3 s here): not Ready once the failure persisted.
    not_ready = eventually(
        lambda: condition(model(), "Ready").get("status") == "False" and model(),
        timeout=90,
        what="Ready=False after the debounce",
    )
    flipped = condition(not_ready, "Ready")["lastTransitionTime"]
    assert flipped >= condition(ready, "Ready")["lastTransitionTime"]

    _patch_rayservice_status(
        control_plane,
        rs,
        {
            **_kuberay_status(rs),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "NonZeroServeEndpoints",
                    "message": "",
                    "lastTransitionTime": "2026-11-22T10:00:00Z",
                },
                {
                    "type": "UpgradeInProgress",
                    "status": "True",
                    "reason": "BothActivePendingClustersExist",
                    "message": "",
                    "lastTransitionTime": "2026-11-22T10:00:00Z",
                },
            ],
        },
    )
    upgrading = eventually(
        lambda: condition(model(), "Progressing").get("status") == "True" and model(),
        what="Progressing=True during an upgrade",
    )
    assert condition(upgrading, "Ready")["status"] == "False"


def test_an_invalid_spec_is_refused_before_the_operator_sees_it(
    control_plane: ControlPlane,
) -> None:
    bad = {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {
            "baseModel": {"source": "Qwen/Qwen2.5-0.5B-Instruct"},
            "replicas": {"min": 3, "max": 2},
        },
    }
    result = control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "replicas.min must be less than or equal to replicas.max" in result.stderr


def test_operator_killed_mid_reconcile_converges_after_restart(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess
) -> None:
    """12 LoRAModels at once; the operator is killed -9 the moment the first RayService is
    written (a watch, not a poll), so the rest are mid-flight: proved by what the API holds
    right after the kill (nothing writes while the operator is dead). While it is down, a user
    edits one model, adds one and deletes one; the restarted operator applies all of that and
    leaves exactly one RayService per remaining LoRAModel."""
    count = 12
    ns = _namespace(control_plane, "op-restart")
    docs = [_minimal_model(f"m{i}", ns) for i in range(count)]
    assert lorafleet_operator.proc is not None
    watch = KillOnEvent(
        control_plane,
        f"/apis/ray.io/v1/namespaces/{ns}/rayservices",
        lorafleet_operator.proc.pid,
        lambda event: event["type"] == "ADDED",
    )
    watch.start()
    control_plane.kubectl(
        "apply", "-f", "-", input_text="\n---\n".join(json.dumps(d) for d in docs)
    )
    assert watch.done.wait(60), "no RayService was created"
    lorafleet_operator.kill9()

    def progress() -> tuple[int, int]:
        services = get_json(control_plane, "rayservices", "-n", ns).get("items", [])
        models = get_json(control_plane, "loramodels", "-n", ns).get("items", [])
        statuses = sum(1 for m in models if m.get("status", {}).get("rayServiceName"))
        return len(services), statuses

    services_at_kill, statuses_at_kill = progress()
    assert services_at_kill >= 1
    assert (services_at_kill, statuses_at_kill) != (count, count), (
        "the kill landed after every reconcile had finished: nothing was mid-flight"
    )

    # Edits while the operator is down: a spec change, a new model, a deleted model.
    control_plane.kubectl(
        "patch",
        "loramodel",
        "m0",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec": {"engine": {"maxLoras": 12, "maxCpuLoras": 32}}}',
    )
    apply_in(control_plane, _minimal_model("late", ns), ns)
    control_plane.kubectl("delete", "loramodel", "m1", "-n", ns)
    expected = sorted(["late", "m0", *(f"m{i}" for i in range(2, count))])

    lorafleet_operator.start()

    def converged() -> bool:
        services = get_json(control_plane, "rayservices", "-n", ns).get("items", [])
        models = get_json(control_plane, "loramodels", "-n", ns).get("items", [])
        owners = sorted(s["metadata"]["ownerReferences"][0]["name"] for s in services)
        m0 = rayservice_for(control_plane, ns, "m0")
        return (
            owners == expected
            and all(m.get("status", {}).get("rayServiceName") for m in models)
            and bool(m0)
            and _serve_args(m0)["engine"]["max_loras"] == 12
        )

    eventually(converged, timeout=120, what=f"one RayService per LoRAModel: {expected}")
    services = get_json(control_plane, "rayservices", "-n", ns)["items"]
    owners = sorted(s["metadata"]["ownerReferences"][0]["name"] for s in services)
    assert owners == expected, "a duplicate, missing or deleted model's RayService"
    print(
        f"\n[kill -9 mid LoRAModel reconcile] at the kill {services_at_kill}/{count} "
        f"RayServices, {statuses_at_kill}/{count} statuses"
    )


def _minimal_model(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"baseModel": {"source": "Qwen/Qwen2.5-0.5B-Instruct"}},
    }


def test_a_deleted_rayservice_is_recreated_and_no_finalizer_blocks_deletion(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess
) -> None:
    ns = _namespace(control_plane, "op-repair")
    apply_in(control_plane, REPO_ROOT / "examples" / "lora-model-minimal.yaml", ns)
    first = eventually(lambda: rayservice_for(control_plane, ns, "qwen-mini"), what="RayService")
    control_plane.kubectl("delete", "rayservice", first["metadata"]["name"], "-n", ns)
    again = eventually(
        lambda: (
            (r := rayservice_for(control_plane, ns, "qwen-mini"))
            and r["metadata"]["uid"] != first["metadata"]["uid"]
            and r
        ),
        what="the operator to re-create the deleted RayService",
    )
    assert again["metadata"]["name"] == first["metadata"]["name"]

    # Without the operator, deleting a LoRAModel must still work (no finalizer to remove).
    model = get_json(control_plane, "loramodel", "qwen-mini", "-n", ns)
    assert not model["metadata"].get("finalizers")
    lorafleet_operator.stop()
    try:
        control_plane.kubectl("delete", "loramodel", "qwen-mini", "-n", ns, "--timeout=30s")
        eventually(
            lambda: not get_json(control_plane, "rayservices", "-n", ns).get("items"),
            timeout=90,
            what="garbage collection without the operator",
        )
    finally:
        lorafleet_operator.start()


def test_the_drift_check_repairs_what_no_event_reported(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess, tmp_path: Path
) -> None:
    """A RayService whose labels were stripped no longer sends the operator events; the drift
    check (every 2 s here) still finds the tampered spec hash and applies our object again.
    The module's operator (drift check every 60 s) is stopped meanwhile, so the repair is this
    operator's drift check: it comes well before 60 s and this operator's log shows it."""
    lorafleet_operator.stop()
    operator = OperatorProcess(control_plane.kubeconfig, tmp_path, drift_check_seconds=2)
    operator.start()
    try:
        ns = _namespace(control_plane, "op-drift")
        apply_in(control_plane, REPO_ROOT / "examples" / "lora-model-minimal.yaml", ns)
        rs = eventually(lambda: rayservice_for(control_plane, ns, "qwen-mini"), what="RayService")
        name = rs["metadata"]["name"]
        applied = f"Applied RayService {ns}/{name}"
        # The create's own reconcile has logged its apply before the tampering starts.
        eventually(lambda: applied in operator.log_text(), what="the create to be logged")
        applies_before = operator.log_text().count(applied)
        tamper_rayservice(control_plane, ns, name)
        tampered = time.monotonic()
        repaired = eventually(
            lambda: (
                (r := get_json(control_plane, "rayservice", name, "-n", ns))
                and r["metadata"]["annotations"]["lorafleet.dev/spec-hash"] != "tampered"
                and r
            ),
            timeout=20,
            interval=0.2,
            what="the drift check to re-apply the RayService",
        )
        repair_seconds = time.monotonic() - tampered
        assert repaired["metadata"]["labels"]["lorafleet.dev/loramodel"] == "qwen-mini"
        # Well within a few 2 s periods, far from the 60 s default anyone else would use.
        assert repair_seconds < 15, repair_seconds
        eventually(
            lambda: operator.log_text().count(applied) > applies_before,
            timeout=10,
            what="this operator to log the re-apply",
        )
        assert "Drift check of LoRAModel" not in operator.log_text()
        print(f"\n[drift check, 2 s] tampered RayService repaired in {repair_seconds:.1f} s")
    finally:
        operator.stop()
        lorafleet_operator.start()
