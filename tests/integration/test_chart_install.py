"""`helm install` of charts/lorafleet on a real control plane of its own, then the operator
run on this machine exactly as the chart's Deployment would run it (its args) and with only
the chart's ServiceAccount token (no admin credentials) through a full flow: a catalog synced
from the S3 server with a credentials Secret, a LoRAModel rendered into a RayService with
status, and the per-LoRAModel runtime ServiceAccount, whose own token reads the index and the
Secret and nothing else. `kubectl auth can-i` shows the grants are not excessive.

The Deployment's pod never runs here (no kubelet): the host process stands in for it, with
the same arguments and identity. A control plane of its own, because this module installs
our CRDs with Helm and installs KubeRay's only after showing the chart refuses to go without.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorafleet_api.contract import CatalogRef
from lorafleet_api.names import LABEL_LORAMODEL
from lorafleet_testbed.adapter_trees import (
    MAX_ADAPTER_SIZE,
    TINY_MODEL_ID,
    VALID_ADAPTERS,
    build_real_adapters,
    tree_files,
    upload_s3,
)
from lorafleet_testbed.controlplane import KUBERAY_CRD_DIR, ControlPlane
from lorafleet_testbed.operators import ChartOperator
from lorafleet_testbed.storage import MinioServer
from lorafleet_testbed.toolchain import REPO_ROOT, tool

from .conftest import condition, eventually, get_json

CHART = REPO_ROOT / "charts" / "lorafleet"
RELEASE = "lf"
SYSTEM = "lorafleet-system"
WATCHED = "team-a"
UNWATCHED = "team-b"
OPERATOR_SA = f"system:serviceaccount:{SYSTEM}:{RELEASE}-lorafleet"
CATALOG = "support"
MODEL = "tiny"
SECRET = "s3-credentials"
OTHER_SECRET = "unrelated-password"


@dataclass
class Installed:
    plane: ControlPlane
    first_attempt: Any  # `helm install` before KubeRay's CRDs existed
    work: Path

    def helm(self, *args: str, check: bool = True) -> Any:
        result = process_run(
            [str(tool("helm")), f"--kubeconfig={self.plane.kubeconfig}", *args], check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def token_kubeconfig(self, namespace: str, service_account: str, name: str) -> Path:
        token = self.plane.kubectl(
            "create", "token", service_account, "-n", namespace, "--duration=2h"
        ).stdout.strip()
        return self.plane.kubeconfig_for_token(token, self.work / f"{name}.kubeconfig")

    def can_i(self, kubeconfig: Path, *args: str) -> bool:
        result = process_run(
            [str(tool("kubectl")), f"--kubeconfig={kubeconfig}", "auth", "can-i", *args],
            check=False,
        )
        assert result.stdout.strip() in ("yes", "no"), result.stderr
        return result.stdout.strip() == "yes"


def process_run(argv: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("chart")
    with ControlPlane.start(crd_dirs=()) as plane:
        for namespace in (SYSTEM, WATCHED, UNWATCHED):
            plane.kubectl("create", "namespace", namespace)
        state = Installed(plane, None, work)
        install = (
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            SYSTEM,
            "--set",
            f"watchNamespaces={{{WATCHED}}}",
            "--wait=false",
        )
        state.first_attempt = state.helm(*install, check=False)
        plane.install_crds([KUBERAY_CRD_DIR])
        state.helm(*install)
        yield state


@dataclass
class Flow:
    installed: Installed
    operator: ChartOperator
    minio: MinioServer


@pytest.fixture(scope="module")
def flow(
    installed: Installed, minio: MinioServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flow]:
    """A catalog in the S3 server with a credentials Secret and a LoRAModel using it, in the
    watched namespace, reconciled by the chart-identity operator."""
    plane = installed.plane
    adapters = build_real_adapters(tmp_path_factory.getbasetemp() / "tiny-lora")
    client = minio.s3_client()
    bucket = "chart-" + RELEASE
    client.create_bucket(Bucket=bucket)
    for name, folder in adapters.items():
        upload_s3(client, bucket, f"loras/{name}/", tree_files(folder))

    def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": WATCHED},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }

    objects = [
        secret(
            SECRET,
            {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key},
        ),
        secret(OTHER_SECRET, {"password": "not-for-lorafleet"}),
        {
            "apiVersion": "lorafleet.dev/v1alpha1",
            "kind": "AdapterCatalog",
            "metadata": {"name": CATALOG, "namespace": WATCHED},
            "spec": {
                "source": {
                    "uri": f"s3://{bucket}/loras",
                    "endpoint": minio.endpoint,
                    "credentialsSecretRef": {"name": SECRET},
                },
                "baseModel": TINY_MODEL_ID,
                "maxAdapterSize": MAX_ADAPTER_SIZE,
            },
        },
        {
            "apiVersion": "lorafleet.dev/v1alpha1",
            "kind": "LoRAModel",
            "metadata": {"name": MODEL, "namespace": WATCHED},
            "spec": {"baseModel": {"source": TINY_MODEL_ID}, "catalogs": [{"name": CATALOG}]},
        },
    ]
    plane.kubectl("apply", "-f", "-", input_text="\n---\n".join(json.dumps(o) for o in objects))
    operator = ChartOperator.from_deployment(
        plane,
        SYSTEM,
        f"{RELEASE}-lorafleet",
        installed.work / "operator",
        env={"LORAFLEET_DEBOUNCE_SECONDS": "3"},
    )
    operator.start()
    try:
        yield Flow(installed, operator, minio)
    finally:
        operator.stop()


def _runtime_objects(plane: ControlPlane, kind: str) -> list[dict[str, Any]]:
    listed = get_json(plane, kind, "-n", WATCHED, "-l", f"{LABEL_LORAMODEL}={MODEL}")
    return list(listed.get("items", []))


# ---------------------------------------------------------------- install


def test_install_refuses_a_cluster_without_kuberay(installed: Installed) -> None:
    first = installed.first_attempt
    assert first.returncode != 0
    assert "KubeRay is not installed: the CRD rayservices.ray.io is missing" in first.stderr
    assert ">=1.6.0 <1.8.0" in first.stderr


def test_helm_install_creates_the_crds_rbac_and_deployment(installed: Installed) -> None:
    plane = installed.plane
    for crd in ("loramodels.lorafleet.dev", "adaptercatalogs.lorafleet.dev"):
        established = condition(get_json(plane, "crd", crd), "Established")
        assert established.get("status") == "True", crd
    role = get_json(plane, "role", f"{RELEASE}-lorafleet", "-n", WATCHED)
    assert role["rules"], "the operator's Role in the watched namespace"
    assert get_json(plane, "rolebinding", f"{RELEASE}-lorafleet", "-n", WATCHED)
    assert not get_json(plane, "role", f"{RELEASE}-lorafleet", "-n", UNWATCHED)
    assert not get_json(plane, "clusterrole", f"{RELEASE}-lorafleet")
    assert get_json(plane, "serviceaccount", f"{RELEASE}-lorafleet", "-n", SYSTEM)
    deployment = get_json(plane, "deployment", f"{RELEASE}-lorafleet", "-n", SYSTEM)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"{RELEASE}-lorafleet"
    assert (
        f"--namespace={WATCHED}" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    releases = json.loads(installed.helm("list", "-n", SYSTEM, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [(RELEASE, "deployed")]


def test_namespaced_grants_are_not_excessive(installed: Installed) -> None:
    operator = installed.token_kubeconfig(SYSTEM, f"{RELEASE}-lorafleet", "can-i-operator")
    can = installed.can_i
    # What it needs, only where it watches.
    assert can(operator, "get", "secrets", "-n", WATCHED)
    assert can(operator, "patch", "loramodels.lorafleet.dev", "-n", WATCHED)
    assert can(operator, "create", "rayservices.ray.io", "-n", WATCHED)
    assert not can(operator, "get", "secrets", "-n", UNWATCHED)
    assert not can(operator, "get", "loramodels.lorafleet.dev", "-n", UNWATCHED)
    # Secrets: by name only, and never cluster-wide.
    assert not can(operator, "list", "secrets", "-n", WATCHED)
    assert not can(operator, "watch", "secrets", "-n", WATCHED)
    assert not can(operator, "list", "secrets", "--all-namespaces")
    # Nothing it does not use.
    for verb, resource in [
        ("create", "deployments.apps"),
        ("patch", "deployments.apps"),
        ("delete", "deployments.apps"),
        ("create", "pods"),
        ("delete", "pods"),
        ("get", "pods"),
        ("delete", "rayservices.ray.io"),
        ("delete", "serviceaccounts"),
        ("delete", "roles.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io"),
        ("bind", "roles.rbac.authorization.k8s.io"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
    ]:
        assert not can(operator, verb, resource, "-n", WATCHED), f"{verb} {resource}"
    assert not can(operator, "delete", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can(operator, "create", "customresourcedefinitions.apiextensions.k8s.io")


# ---------------------------------------------------------------- the flow


def test_a_full_flow_runs_on_the_charts_service_account_alone(flow: Flow) -> None:
    plane = flow.installed.plane

    def synced() -> dict[str, Any]:
        catalog = get_json(plane, "adaptercatalogs", CATALOG, "-n", WATCHED)
        return catalog if condition(catalog, "Ready").get("status") == "True" else {}

    catalog = eventually(synced, timeout=90, what="the catalog synced with its Secret")
    assert catalog["status"]["counts"]["valid"] == len(VALID_ADAPTERS)

    def rendered() -> dict[str, Any]:
        model = get_json(plane, "loramodels", MODEL, "-n", WATCHED)
        served = (model.get("status") or {}).get("adapters", {}).get("served")
        return model if served == len(VALID_ADAPTERS) else {}

    model = eventually(rendered, timeout=60, what="the LoRAModel's status with its adapters")
    assert condition(model, "Ready").get("status") == "False"  # no kubelet: pods never run
    rayservices = get_json(plane, "rayservices", "-n", WATCHED).get("items", [])
    assert [rs["metadata"]["labels"][LABEL_LORAMODEL] for rs in rayservices] == [MODEL]

    (service_account,) = _runtime_objects(plane, "serviceaccounts")
    (role,) = _runtime_objects(plane, "roles")
    (binding,) = _runtime_objects(plane, "rolebindings")
    assert binding["subjects"][0]["name"] == service_account["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    for obj in (service_account, role, binding):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("LoRAModel", MODEL)
    for group in ("headGroupSpec", "workerGroupSpecs"):
        spec = rayservices[0]["spec"]["rayClusterConfig"][group]
        for pod_group in spec if isinstance(spec, list) else [spec]:
            pod = pod_group["template"]["spec"]
            assert pod["serviceAccountName"] == service_account["metadata"]["name"]

    log = flow.operator.log_text()
    assert "Forbidden" not in log and " 403" not in log, "the chart's rules were not enough"
    assert flow.minio.secret_key not in log


def test_the_runtime_service_account_reads_its_index_and_secret_and_nothing_else(
    flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from lorafleet_runtime.adapters.index import KubernetesIndexSource

    plane = flow.installed.plane
    eventually(lambda: _runtime_objects(plane, "serviceaccounts"), what="the runtime SA")
    eventually(
        lambda: (
            condition(get_json(plane, "adaptercatalogs", CATALOG, "-n", WATCHED), "Ready").get(
                "status"
            )
            == "True"
        ),
        timeout=90,
        what="the catalog synced",
    )
    (service_account,) = _runtime_objects(plane, "serviceaccounts")
    runtime = flow.installed.token_kubeconfig(
        WATCHED, service_account["metadata"]["name"], "runtime"
    )
    monkeypatch.setenv("KUBECONFIG", str(runtime))

    async def read() -> tuple[str | None, Any]:
        source = KubernetesIndexSource()
        try:
            ref = CatalogRef(name=CATALOG, namespace=WATCHED)
            manifest = await source.manifest_text(ref)
            storage = await source.storage(ref, f"s3://chart-{RELEASE}/loras")
            return manifest, storage
        finally:
            await source.close()

    manifest, storage = asyncio.run(read())
    assert manifest is not None and '"catalog":"support"' in manifest.replace(" ", "")
    assert storage.unavailable is None, storage.unavailable
    assert storage.credentials is not None
    assert storage.endpoint == flow.minio.endpoint

    can = flow.installed.can_i
    assert can(runtime, "get", f"secret/{SECRET}", "-n", WATCHED)
    assert not can(runtime, "get", f"secret/{OTHER_SECRET}", "-n", WATCHED)
    assert not can(runtime, "list", "secrets", "-n", WATCHED)
    assert not can(runtime, "get", "configmap/kube-root-ca.crt", "-n", WATCHED)
    assert not can(runtime, "get", "adaptercatalogs.lorafleet.dev/other", "-n", WATCHED)
    for verb in ("create", "patch", "update", "delete"):
        for resource in ("configmaps", "secrets", "adaptercatalogs.lorafleet.dev", "pods"):
            assert not can(runtime, verb, resource, "-n", WATCHED), f"{verb} {resource}"
    assert not can(runtime, "get", f"secret/{SECRET}", "-n", UNWATCHED)


# ---------------------------------------------------------------- upgrade and uninstall


def test_upgrade_changes_the_grants_and_args_and_uninstall_leaves_crds_and_models(
    installed: Installed,
) -> None:
    """A second release of its own (another namespace and watch list), so the first one's
    tests are untouched."""
    plane = installed.plane
    release, system, watched, extra = "lf2", "lorafleet-two", "team-c", "team-d"
    for namespace in (system, watched, extra):
        plane.kubectl("create", "namespace", namespace)
    installed.helm(
        "install", release, str(CHART), "-n", system, "--set", f"watchNamespaces={{{watched}}}"
    )
    name = f"{release}-lorafleet"
    assert get_json(plane, "role", name, "-n", watched)
    assert not get_json(plane, "role", name, "-n", extra)

    values = installed.work / "upgrade-values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "watchNamespaces": [watched, extra],
                "operator": {"debounceSeconds": 5, "logFormat": "plain"},
                "metrics": {"enabled": False},
            }
        )
    )
    installed.helm("upgrade", release, str(CHART), "-n", system, "-f", str(values))
    assert get_json(plane, "role", name, "-n", extra), "upgrade added the new namespace's Role"
    args = get_json(plane, "deployment", name, "-n", system)["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--debounce-seconds=5" in args and "--log-format=plain" in args
    assert f"--namespace={extra}" in args
    assert not get_json(plane, "service", f"{name}-metrics", "-n", system), "metrics turned off"

    refused = installed.helm(
        "upgrade", release, str(CHART), "-n", system, "--set", "imgae.tag=x", check=False
    )
    assert refused.returncode != 0 and "additional properties 'imgae' not allowed" in refused.stderr

    model = {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": "kept", "namespace": watched},
        "spec": {"baseModel": {"source": TINY_MODEL_ID}, "catalogs": [{"name": "none"}]},
    }
    plane.kubectl("apply", "-f", "-", input_text=json.dumps(model))
    installed.helm("uninstall", release, "-n", system)
    assert not get_json(plane, "deployment", name, "-n", system)
    assert not get_json(plane, "role", name, "-n", watched)
    assert not get_json(plane, "serviceaccount", name, "-n", system)
    assert get_json(plane, "crd", "loramodels.lorafleet.dev"), "Helm never deletes crds/ CRDs"
    assert get_json(plane, "loramodels", "kept", "-n", watched), "existing LoRAModels stay"
    # Without an operator and without finalizers, a user can still delete them.
    plane.kubectl("delete", "loramodel", "kept", "-n", watched, "--timeout=30s")
