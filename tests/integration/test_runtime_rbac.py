"""The Ray pods of a LoRAModel run as a ServiceAccount the operator renders and grants, in the
LoRAModel's namespace, exactly what the runtime reads: its AdapterCatalogs, their index
ConfigMaps and their credentials Secrets, by name, with `get`. Proved against a real API
server with a real token of that ServiceAccount, `kubectl auth can-i` and the runtime's own
index reader; and: the objects go with the LoRAModel, a user's own ServiceAccount takes over,
an operator without the permission says so in status."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from lorafleet_api.catalog_index import manifest_name, parse_manifest, read_index, shard_name
from lorafleet_api.contract import CatalogRef
from lorafleet_api.storage import CATALOG_UNAVAILABLE
from lorafleet_runtime.adapters.index import KubernetesIndexSource
from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.storage import MinioServer

from .conftest import OperatorProcess, condition, eventually, get_json

MODEL = "qwen"
RUNTIME_SA = "qwen-runtime"
CATALOG = "support"
OTHER_CATALOG = "other"
SECRET = "s3-keys"
OTHER_SECRET = "unrelated-keys"
OTHER_CONFIGMAP = "unrelated-settings"


@pytest.fixture(scope="module")
def bucket(minio: MinioServer) -> str:
    """A bucket with one adapter folder (invalid: no weights; the index lists it all the same)."""
    name = "rbac-" + secrets.token_hex(4)
    client: Any = minio.s3_client()
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="loras/support/adapter_config.json", Body=b'{"r": 8}')
    return name


@dataclass(frozen=True)
class Namespace:
    name: str
    plane: ControlPlane

    def apply(self, obj: dict[str, Any]) -> None:
        self.plane.kubectl(
            "apply", "-n", self.name, "-f", "-", input_text=json.dumps(obj), check=True
        )

    def get(self, *args: str) -> dict[str, Any]:
        return get_json(self.plane, *args, "-n", self.name)

    def patch_model(self, spec: dict[str, Any]) -> None:
        self.plane.kubectl(
            "patch",
            "loramodel",
            MODEL,
            "-n",
            self.name,
            "--type=merge",
            "-p",
            json.dumps({"spec": spec}),
        )

    def role_grants(self) -> dict[str, list[str]]:
        """resource -> resourceNames of the runtime Role; {} when there is none or no rules."""
        role = self.get("role", RUNTIME_SA)
        return {
            rule["resources"][0]: rule.get("resourceNames", []) for rule in role.get("rules") or []
        }


def _secret(name: str, minio: MinioServer) -> dict[str, Any]:
    data = {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _catalog(name: str, bucket: str, endpoint: str, secret: str) -> dict[str, Any]:
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "AdapterCatalog",
        "metadata": {"name": name},
        "spec": {
            "source": {
                "uri": f"s3://{bucket}/loras",
                "endpoint": endpoint,
                "credentialsSecretRef": {"name": secret},
            },
        },
    }


def _loramodel(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": MODEL},
        "spec": {
            "baseModel": {"source": "Qwen/Qwen2.5-0.5B-Instruct"},
            "catalogs": [{"name": CATALOG}],
            **spec,
        },
    }


def _new_namespace(plane: ControlPlane, prefix: str) -> Namespace:
    name = f"{prefix}-{secrets.token_hex(3)}"
    plane.kubectl("create", "namespace", name)
    return Namespace(name, plane)


def _model_with_catalog(
    plane: ControlPlane, minio: MinioServer, bucket: str, prefix: str
) -> Namespace:
    """A namespace with a synced catalog (credentials in a Secret), another catalog, an
    unrelated Secret and ConfigMap, and a LoRAModel using the first catalog, once its Role
    names the index's shards (the catalog sync refreshed the LoRAModel)."""
    ns = _new_namespace(plane, prefix)
    for secret in (SECRET, OTHER_SECRET):
        ns.apply(_secret(secret, minio))
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": OTHER_CONFIGMAP},
            "data": {"k": "v"},
        }
    )
    ns.apply(_catalog(CATALOG, bucket, minio.endpoint, SECRET))
    ns.apply(_catalog(OTHER_CATALOG, bucket, minio.endpoint, OTHER_SECRET))
    ns.apply(_loramodel())
    # One shard after the first sync: shards 0 and 1 are granted (room for one doubling).
    eventually(
        lambda: shard_name(CATALOG, 1) in ns.role_grants().get("configmaps", []),
        timeout=90,
        what="the runtime Role to name the synced index's shards",
    )
    eventually(
        lambda: ns.get("configmap", manifest_name(OTHER_CATALOG)),
        timeout=60,
        what="the other catalog's index",
    )
    return ns


def _token_kubeconfig(plane: ControlPlane, ns: Namespace, account: str, path: Path) -> Path:
    token = plane.kubectl("create", "token", account, "-n", ns.name).stdout.strip()
    return plane.kubeconfig_for_token(token, path)


def _can(
    plane: ControlPlane, kubeconfig: Path, namespace: str, verb: str, what: str, *extra: str
) -> bool:
    result = plane.kubectl(
        "auth",
        "can-i",
        verb,
        what,
        "-n",
        namespace,
        f"--kubeconfig={kubeconfig}",
        *extra,
        check=False,
    )
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.returncode == 0 and result.stdout.strip() == "yes"


def _pod_service_accounts(ns: Namespace) -> list[str | None]:
    items = ns.get("rayservices", "-l", f"lorafleet.dev/loramodel={MODEL}").get("items", [])
    if len(items) != 1:
        return []
    cluster = items[0]["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster.get("workerGroupSpecs", [])
    ]
    return [pod.get("serviceAccountName") for pod in pods]


ALLOWED = [
    ("get", f"adaptercatalogs.lorafleet.dev/{CATALOG}"),
    ("get", f"configmaps/{manifest_name(CATALOG)}"),
    ("get", f"configmaps/{shard_name(CATALOG, 0)}"),
    ("get", f"secrets/{SECRET}"),
]
DENIED = [
    ("get", f"secrets/{OTHER_SECRET}"),
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("get", f"configmaps/{OTHER_CONFIGMAP}"),
    ("get", f"configmaps/{manifest_name(OTHER_CATALOG)}"),
    ("list", "configmaps"),
    ("get", f"adaptercatalogs.lorafleet.dev/{OTHER_CATALOG}"),
    ("list", "adaptercatalogs.lorafleet.dev"),
    ("get", f"loramodels.lorafleet.dev/{MODEL}"),
    ("create", "configmaps"),
    ("patch", f"configmaps/{manifest_name(CATALOG)}"),
    ("update", f"configmaps/{manifest_name(CATALOG)}"),
    ("delete", f"configmaps/{manifest_name(CATALOG)}"),
    ("patch", f"adaptercatalogs.lorafleet.dev/{CATALOG}"),
    ("delete", f"adaptercatalogs.lorafleet.dev/{CATALOG}"),
    ("create", "secrets"),
    ("patch", f"secrets/{SECRET}"),
    ("delete", f"secrets/{SECRET}"),
    ("get", "pods"),
    ("create", "pods"),
    ("patch", f"roles.rbac.authorization.k8s.io/{RUNTIME_SA}"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts"),
]


def test_ray_pods_read_their_catalogs_and_nothing_else(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: str,
    lorafleet_operator: OperatorProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = _model_with_catalog(control_plane, minio, bucket, "rbac-reads")
    account = ns.get("serviceaccount", RUNTIME_SA)
    assert account["automountServiceAccountToken"] is True
    binding = ns.get("rolebinding", RUNTIME_SA)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RUNTIME_SA, "namespace": ns.name}
    ]
    for obj in (account, binding, ns.get("role", RUNTIME_SA)):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("LoRAModel", MODEL, True)
    service_accounts = eventually(lambda: _pod_service_accounts(ns), what="the RayService")
    assert service_accounts == [RUNTIME_SA, RUNTIME_SA]

    kubeconfig = _token_kubeconfig(control_plane, ns, RUNTIME_SA, tmp_path / "runtime.yaml")
    # The authorizer learns new bindings from a watch: wait for the first grant.
    eventually(
        lambda: _can(control_plane, kubeconfig, ns.name, *ALLOWED[0]),
        timeout=30,
        what="the RoleBinding to take effect",
    )
    for verb, what in ALLOWED:
        assert _can(control_plane, kubeconfig, ns.name, verb, what), f"cannot {verb} {what}"
    for verb, what in DENIED:
        assert not _can(control_plane, kubeconfig, ns.name, verb, what), f"can {verb} {what}"
    assert not _can(control_plane, kubeconfig, "default", "get", f"secrets/{SECRET}")
    assert not _can(
        control_plane,
        kubeconfig,
        ns.name,
        "create",
        f"serviceaccounts/{RUNTIME_SA}",
        "--subresource=token",
    )

    # The runtime's own reader, as the pod would run it.
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    asyncio.run(_read_as_the_runtime(ns.name, minio))


async def _read_as_the_runtime(namespace: str, minio: MinioServer) -> None:
    source = KubernetesIndexSource()
    try:
        ref = CatalogRef(name=CATALOG, namespace=namespace)
        manifest_text = await source.manifest_text(ref)
        assert manifest_text is not None
        manifest = parse_manifest(manifest_text)
        shards = await source.shard_texts(ref, [shard.name for shard in manifest.shards])
        assert [record.name for record in read_index(manifest_text, shards)] == ["support"]
        storage = await source.storage(ref, manifest.uri)
        assert storage.unavailable is None
        assert storage.credentials is not None
        assert storage.credentials.s3_keys()["aws_access_key_id"] == minio.access_key

        other = CatalogRef(name=OTHER_CATALOG, namespace=namespace)
        with pytest.raises(ApiException) as caught:
            await source.manifest_text(other)
        assert caught.value.status == 403
        refused = await source.storage(other, "s3://elsewhere/")
        assert refused.unavailable is not None
        assert refused.unavailable.reason == CATALOG_UNAVAILABLE
        assert "may not be read (RBAC)" in refused.unavailable.message
    finally:
        await source.close()


def test_a_renamed_credentials_secret_reaches_the_role_with_the_catalog_sync(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: str,
    lorafleet_operator: OperatorProcess,
) -> None:
    ns = _model_with_catalog(control_plane, minio, bucket, "rbac-rename")
    assert ns.role_grants()["secrets"] == [SECRET]
    ns.apply(_secret("s3-keys-rotated", minio))
    ns.apply(_catalog(CATALOG, bucket, minio.endpoint, "s3-keys-rotated"))
    # Well within the drift check (60 s): the sync's summary change refreshes the LoRAModel.
    eventually(
        lambda: ns.role_grants().get("secrets") == ["s3-keys-rotated"],
        timeout=40,
        what="the Role to name the new Secret (and only it)",
    )


def test_a_user_service_account_takes_over_and_the_role_grants_nothing(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: str,
    lorafleet_operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    ns = _model_with_catalog(control_plane, minio, bucket, "rbac-user-sa")
    eventually(lambda: _pod_service_accounts(ns) == [RUNTIME_SA] * 2, what="the RayService")
    kubeconfig = _token_kubeconfig(control_plane, ns, RUNTIME_SA, tmp_path / "runtime.yaml")
    eventually(
        lambda: _can(control_plane, kubeconfig, ns.name, "get", f"secrets/{SECRET}"),
        timeout=30,
        what="the grant",
    )

    control_plane.kubectl("create", "serviceaccount", "llm-serving", "-n", ns.name)
    ns.patch_model({"serviceAccountName": "llm-serving"})
    eventually(
        lambda: _pod_service_accounts(ns) == ["llm-serving"] * 2,
        what="the Ray pods to run as the user's ServiceAccount",
    )
    eventually(lambda: ns.get("role", RUNTIME_SA).get("rules") in (None, []), what="no rules")
    eventually(
        lambda: not _can(control_plane, kubeconfig, ns.name, "get", f"secrets/{SECRET}"),
        timeout=30,
        what="the old ServiceAccount to lose its grant",
    )
    # Nothing is deleted (the operator has no delete verb): the objects wait for GC.
    assert ns.get("serviceaccount", RUNTIME_SA)
    assert ns.get("rolebinding", RUNTIME_SA)

    # Back to the rendered ServiceAccount: the grants come back.
    ns.patch_model({"serviceAccountName": None})
    eventually(
        lambda: (
            _pod_service_accounts(ns) == [RUNTIME_SA] * 2
            and ns.role_grants().get("secrets") == [SECRET]
        ),
        what="the rendered ServiceAccount and its grants again",
    )


def test_deleting_the_loramodel_garbage_collects_the_runtime_rbac(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: str,
    lorafleet_operator: OperatorProcess,
) -> None:
    ns = _model_with_catalog(control_plane, minio, bucket, "rbac-gc")
    control_plane.kubectl("delete", "loramodel", MODEL, "-n", ns.name)
    for kind in ("serviceaccount", "role", "rolebinding"):
        eventually(
            lambda kind=kind: not ns.get(kind, RUNTIME_SA),
            timeout=90,
            what=f"garbage collection of the {kind}",
        )
    # The catalog's Secret and index are not the LoRAModel's: they stay.
    assert ns.get("secret", SECRET)
    assert ns.get("configmap", manifest_name(CATALOG))


# ---------------------------------------------------------------- an operator without the verbs

LIMITED_RULES = [
    # What the operator does besides the runtime RBAC, broadly: this test is about roles.
    {"apiGroups": ["lorafleet.dev"], "resources": ["*"], "verbs": ["*"]},
    {"apiGroups": ["ray.io"], "resources": ["*"], "verbs": ["*"]},
    {
        "apiGroups": [""],
        "resources": ["configmaps", "secrets", "events", "namespaces", "serviceaccounts"],
        "verbs": ["*"],
    },
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["*"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["get"],
    },
]


@pytest.fixture
def limited_operator(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, str]]:
    """The module's operator stopped, and one running as a ServiceAccount that may read but
    not write Roles and RoleBindings; yields it and its ClusterRole's name."""
    ns = _new_namespace(control_plane, "rbac-operator")
    role = ns.name  # cluster-scoped objects named after the namespace: unique
    control_plane.kubectl("create", "serviceaccount", "lorafleet", "-n", ns.name)
    control_plane.kubectl(
        "apply",
        "-f",
        "-",
        input_text=json.dumps(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role},
                "rules": LIMITED_RULES,
            }
        ),
    )
    control_plane.kubectl(
        "create",
        "clusterrolebinding",
        role,
        f"--clusterrole={role}",
        f"--serviceaccount={ns.name}:lorafleet",
    )
    kubeconfig = _token_kubeconfig(control_plane, ns, "lorafleet", tmp_path / "operator.yaml")
    lorafleet_operator.stop()
    limited = OperatorProcess(kubeconfig, tmp_path, drift_check_seconds=2)
    try:
        limited.start()
        yield limited, role
    finally:
        limited.stop()
        lorafleet_operator.start()


def test_an_operator_that_may_not_write_roles_says_so_in_status_and_recovers(
    control_plane: ControlPlane, limited_operator: tuple[OperatorProcess, str]
) -> None:
    operator, cluster_role = limited_operator
    ns = _new_namespace(control_plane, "rbac-forbidden")
    ns.apply(_loramodel(catalogs=[]))

    def degraded() -> dict[str, Any]:
        return condition(ns.get("loramodel", MODEL), "Degraded")

    refused = eventually(
        lambda: degraded().get("reason") == "OperatorForbidden" and degraded(),
        what="Degraded=True with reason OperatorForbidden",
    )
    assert refused["status"] == "True"
    assert f"The operator may not write Role {ns.name}/{RUNTIME_SA}" in refused["message"]
    assert "get, create and patch on roles (rbac.authorization.k8s.io)" in refused["message"]
    # The pods' ServiceAccount came first; nothing that needs the Role was written.
    assert ns.get("serviceaccount", RUNTIME_SA)
    assert not ns.get("rayservices").get("items")
    assert "Traceback" not in operator.log_text()

    rules = [*LIMITED_RULES[:-1]]
    rules.append(
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["roles", "rolebindings"],
            "verbs": ["get", "create", "patch"],
        }
    )
    control_plane.kubectl(
        "patch", "clusterrole", cluster_role, "--type=merge", "-p", json.dumps({"rules": rules})
    )
    eventually(
        lambda: degraded().get("reason") == "AsExpected" and _pod_service_accounts(ns),
        what="the RayService once the operator may write Roles",
    )
    assert ns.get("role", RUNTIME_SA)
    assert ns.get("rolebinding", RUNTIME_SA)
