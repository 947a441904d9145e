"""The Helm chart rendered by the pinned helm: lint, and what `helm template` makes of the
defaults and of each values file in charts/lorafleet/ci/ (namespaced mode, no metrics, a
ServiceMonitor, custom images)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorafleet_testbed.toolchain import REPO_ROOT, tool

CHART = REPO_ROOT / "charts" / "lorafleet"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(tool("helm")), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def render(*args: str, namespace: str = "platform") -> list[dict[str, Any]]:
    out = helm("template", "lf", str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def the(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    return dict(pod["containers"][0])


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.stem if v else "defaults")
def test_lint_and_template_pass(values: Path | None) -> None:
    extra = ["-f", str(values)] if values else []
    lint = helm("lint", str(CHART), "--strict", *extra, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(*extra)
    assert by_kind(docs, "Deployment")
    assert not by_kind(docs, "CustomResourceDefinition"), "CRDs belong in crds/, not templates"


def test_every_object_carries_the_standard_labels() -> None:
    for doc in render():
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "lorafleet", doc["kind"]
        assert labels["app.kubernetes.io/instance"] == "lf"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "lorafleet-0.1.0"


def test_the_operator_pod_is_locked_down() -> None:
    docs = render()
    deployment = the(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(docs)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"
    probe = container(docs)["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert "--liveness=http://0.0.0.0:8080/healthz" in container(docs)["args"]
    assert container(docs)["resources"]["limits"]["memory"] == "1Gi"


def test_args_follow_the_values() -> None:
    docs = render("-f", str(CHART / "ci" / "custom-image-values.yaml"))
    spec = container(docs)
    assert spec["image"] == (
        "registry.example.com/platform/lorafleet-operator@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert spec["imagePullPolicy"] == "Always"
    args = spec["args"]
    assert "--image=registry.example.com/platform/lorafleet-runtime:0.1.0-cu128" in args
    assert "--log-format=plain" in args
    assert "--verbose" in args
    assert "--debounce-seconds=10" in args
    assert "--catalog-fetch-concurrency=8" in args
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operators"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert not by_kind(docs, "ServiceAccount"), "serviceAccount.create=false creates none"
    binding = the(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "platform-operators", "namespace": "platform"}
    ]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"} in spec["env"]


def _rules(role: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted(
        (group, resource, tuple(sorted(rule["verbs"])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    )


def test_cluster_wide_mode_binds_one_cluster_role_with_exactly_the_operators_rules() -> None:
    docs = render()
    assert not by_kind(docs, "Role")
    role = the(docs, "ClusterRole")
    rules = _rules(role)
    for _, resource, verbs in rules:
        assert "*" not in verbs and resource != "*"
        assert "escalate" not in verbs and "bind" not in verbs and "impersonate" not in verbs
    granted = {(g, r): v for g, r, v in rules}
    assert granted[("", "secrets")] == ("get",), "Secrets: get by name only, never list/watch"
    assert ("", "pods") not in granted and ("apps", "deployments") not in granted
    assert ("apiextensions.k8s.io", "customresourcedefinitions") not in granted
    assert "delete" not in granted[("ray.io", "rayservices")]
    assert granted[("lorafleet.dev", "loramodels/status")] == ("patch",)
    args = container(docs)["args"]
    assert not [a for a in args if a.startswith("--namespace")]
    binding = the(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_namespaced_mode_renders_the_same_rules_as_roles_in_each_namespace() -> None:
    cluster_rules = _rules(the(render(), "ClusterRole"))
    docs = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert _rules(role) == cluster_rules, "one rule list for both modes"
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == "platform"
    args = container(docs)["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_metrics_service_and_service_monitor_follow_the_values() -> None:
    docs = render()
    service = the(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    selector = the(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    assert not by_kind(docs, "ServiceMonitor"), "off by default"
    assert "--metrics-address=0.0.0.0:9090" in container(docs)["args"]

    monitored = render("-f", str(CHART / "ci" / "servicemonitor-values.yaml"))
    monitor = the(monitored, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["spec"]["selector"]["matchLabels"] == selector

    quiet = render("-f", str(CHART / "ci" / "no-metrics-values.yaml"))
    assert not by_kind(quiet, "Service") and not by_kind(quiet, "ServiceMonitor")
    assert not [a for a in container(quiet)["args"] if a.startswith("--metrics-address")]


def test_a_mistyped_value_fails_with_a_schema_error() -> None:
    result = helm("template", "lf", str(CHART), "--set", "imgae.tag=x", check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert "additional properties 'imgae' not allowed" in result.stderr


def test_an_existing_service_account_must_be_named() -> None:
    result = helm("template", "lf", str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert result.returncode != 0
    assert "serviceAccount.name must name an existing ServiceAccount" in result.stderr


def test_notes_name_the_kuberay_range_and_what_uninstall_leaves() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert ">=1.6.0 <1.8.0" in notes
    assert "never the CRDs" in notes
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["annotations"]["lorafleet.dev/kuberay-versions"] == ">=1.6.0 <1.8.0"
