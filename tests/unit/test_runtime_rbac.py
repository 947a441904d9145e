"""The ServiceAccount, Role and RoleBinding of a LoRAModel's Ray pods: golden files, and what
users and cluster admins rely on (the pods read their catalogs and nothing else; a user's
own ServiceAccount is left to them)."""

from __future__ import annotations

import asyncio
import copy
import datetime
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorafleet_api.catalog_index import MAX_SHARDS, AdapterRecord, build_index, manifest_name
from lorafleet_api.names import ANNOTATION_SPEC_HASH, LABEL_LORAMODEL, LABEL_MANAGED_BY
from lorafleet_operator.builders import (
    dump_manifest,
    rayservice_name,
    render_rayservice,
    render_revoked_runtime_role,
    render_runtime_rbac,
    runtime_rbac_name,
)
from lorafleet_operator.builders.runtime_rbac import index_shard_grant
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.k8s.client import KubeApiError
from lorafleet_operator.model import CatalogSnapshot, OperatorConfig
from lorafleet_operator.reconcile.loramodel import Outcome, reconcile_loramodel

GOLDEN_DIR = Path(__file__).parent / "golden"
UID = "0b7e4f8e-4c8f-4b8e-9d61-0a1c2b3d4e5f"
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# What KubeRay names its autoscaler's ServiceAccount, Role and RoleBinding: the RayCluster,
# "<RayService>-<5 of utilrand's characters>".
KUBERAY_CLUSTER_NAME = re.compile(r".+-[bcdfghjklmnpqrstvwxz2456789]{5}")
NAME_63 = "support-" + "x" * 46 + "-eu-west1"  # 63 characters


def loramodel(name: str, spec: dict[str, Any], *, uid: str | None = UID) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "demo", "generation": 1}
    if uid:
        metadata["uid"] = uid
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": metadata,
        "spec": spec,
    }


def catalog(name: str, *, secret: str | None = None, shards: int | None = None) -> dict[str, Any]:
    """An AdapterCatalog as the API server returns it (status after a sync when ``shards``)."""
    source: dict[str, Any] = {"uri": f"s3://adapters/{name}", "endpoint": "http://minio:9000"}
    if secret:
        source["credentialsSecretRef"] = {"name": secret}
    obj: dict[str, Any] = {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "AdapterCatalog",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"source": source},
    }
    if shards is not None:
        obj["status"] = {
            "index": {"configMap": manifest_name(name), "shards": shards, "digest": "d"},
        }
    return obj


def snapshot(name: str, *, secret: str | None = None, shards: int | None = None) -> CatalogSnapshot:
    return CatalogSnapshot.from_object(catalog(name, secret=secret, shards=shards))


def with_catalogs(*names: str, **spec: Any) -> dict[str, Any]:
    return {
        "baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"},
        "catalogs": [{"name": name} for name in names],
        **spec,
    }


CASES: dict[str, tuple[dict[str, Any], list[CatalogSnapshot]]] = {
    # Three catalogs: synced with credentials, synced without, and one that does not exist.
    "catalogs": (
        loramodel("support", with_catalogs("support-adapters", "billing-adapters", "legal")),
        [
            snapshot("support-adapters", secret="s3-support", shards=2),
            snapshot("billing-adapters", shards=1),
            CatalogSnapshot.missing("legal", "demo"),
        ],
    ),
    # No catalogs: a Role without rules (never a rule without names).
    "no-catalogs": (loramodel("qwen", with_catalogs()), []),
    "long-name": (
        loramodel(NAME_63, with_catalogs("shared")),
        [snapshot("shared", secret="gcs-key")],
    ),
}


def render(case: str) -> list[dict[str, Any]]:
    obj, snapshots = CASES[case]
    return render_runtime_rbac(obj, snapshots)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def rules(objects: list[dict[str, Any]]) -> dict[str, list[str]]:
    """resource -> resourceNames of the Role."""
    return {
        rule["resources"][0]: rule["resourceNames"] for rule in by_kind(objects)["Role"]["rules"]
    }


# ---------------------------------------------------------------- golden files


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_runtime_rbac_matches_its_golden_file(case: str, update_golden: bool) -> None:
    rendered = "---\n".join(dump_manifest(obj) for obj in render(case))
    golden = GOLDEN_DIR / f"runtime-rbac-{case}.yaml"
    if update_golden:
        golden.write_text(rendered)
    assert golden.exists(), f"missing {golden.name}: run pytest tests/unit --update-golden"
    assert rendered == golden.read_text(), f"{golden.name} differs: review, then --update-golden"
    assert list(yaml.safe_load_all(golden.read_text())) == render(case)


# ---------------------------------------------------------------- the grants


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rule_gets_named_objects_only(case: str) -> None:
    # An empty resourceNames grants every name: such a rule must never be rendered.
    for rule in by_kind(render(case))["Role"]["rules"]:
        assert rule["verbs"] == ["get"]
        assert rule["resourceNames"], rule
        assert rule["resourceNames"] == sorted(set(rule["resourceNames"]))
        assert (rule["apiGroups"], rule["resources"]) in (
            ([""], ["configmaps"]),
            ([""], ["secrets"]),
            (["lorafleet.dev"], ["adaptercatalogs"]),
        )


def test_the_role_names_the_catalogs_their_index_and_their_secrets() -> None:
    grants = rules(render("catalogs"))
    assert grants["adaptercatalogs"] == ["billing-adapters", "legal", "support-adapters"]
    assert grants["secrets"] == ["s3-support"]
    assert grants["configmaps"] == sorted(
        [
            "lorafleet-catalog.billing-adapters",
            "lorafleet-catalog.billing-adapters.0",
            "lorafleet-catalog.billing-adapters.1",
            # Not synced yet (or missing): the manifest and the first shard.
            "lorafleet-catalog.legal",
            "lorafleet-catalog.legal.0",
            "lorafleet-catalog.support-adapters",
            *(f"lorafleet-catalog.support-adapters.{i}" for i in range(4)),
        ]
    )


def test_without_catalogs_the_role_has_no_rules() -> None:
    assert by_kind(render("no-catalogs"))["Role"]["rules"] == []


def test_no_secrets_rule_when_no_catalog_names_credentials() -> None:
    obj = loramodel("qwen", with_catalogs("a", "b"))
    grants = rules(render_runtime_rbac(obj, [snapshot("a", shards=1), snapshot("b")]))
    assert "secrets" not in grants
    assert set(grants) == {"adaptercatalogs", "configmaps"}


def test_secrets_of_missing_or_unreferenced_catalogs_are_not_granted() -> None:
    obj = loramodel("qwen", with_catalogs("a"))
    snapshots = [
        snapshot("a"),
        # Not in spec.catalogs: a snapshot passed by mistake grants nothing.
        snapshot("unrelated", secret="someone-elses-keys", shards=4),
    ]
    grants = rules(render_runtime_rbac(obj, snapshots))
    assert "secrets" not in grants
    assert grants["adaptercatalogs"] == ["a"]
    assert not any("unrelated" in name for name in grants["configmaps"])


def test_two_catalogs_sharing_a_secret_name_it_once() -> None:
    obj = loramodel("qwen", with_catalogs("a", "b"))
    grants = rules(render_runtime_rbac(obj, [snapshot("a", secret="k"), snapshot("b", secret="k")]))
    assert grants["secrets"] == ["k"]


@pytest.mark.parametrize(
    "shards,granted", [(0, 1), (1, 2), (2, 4), (64, 128), (512, 1024), (1024, 1024)]
)
def test_shards_are_granted_with_room_for_one_doubling(shards: int, granted: int) -> None:
    assert index_shard_grant(shards) == granted
    obj = loramodel("qwen", with_catalogs("a"))
    names = rules(render_runtime_rbac(obj, [snapshot("a", shards=shards)]))["configmaps"]
    assert len(names) == 1 + granted
    assert f"lorafleet-catalog.a.{granted - 1}" in names
    assert f"lorafleet-catalog.a.{granted}" not in names
    assert granted <= MAX_SHARDS


def test_every_configmap_of_a_real_index_is_granted_and_of_the_next_doubling() -> None:
    # The runtime reads the manifest and the shards it names (KubernetesIndexSource).
    records = [
        AdapterRecord(name=f"adapter-{i}", uri=f"s3://b/p/adapter-{i}/", revision="1", valid=True)
        for i in range(3)
    ]
    manifest, shard_texts = build_index("a", "demo", "s3://b/p/", records)
    obj = loramodel("qwen", with_catalogs("a"))
    snap = snapshot("a", shards=len(manifest.shards))
    granted = set(rules(render_runtime_rbac(obj, [snap]))["configmaps"])
    assert {manifest_name("a"), *shard_texts} <= granted
    doubled = {f"lorafleet-catalog.a.{i}" for i in range(2 * len(manifest.shards))}
    assert doubled <= granted


def test_a_grown_index_changes_the_role_and_its_hash_only() -> None:
    obj = loramodel("qwen", with_catalogs("a"))
    before = by_kind(render_runtime_rbac(obj, [snapshot("a", shards=1)]))
    after = by_kind(render_runtime_rbac(obj, [snapshot("a", shards=2)]))
    assert before["ServiceAccount"] == after["ServiceAccount"]
    assert before["RoleBinding"] == after["RoleBinding"]
    hashes = {
        role["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        for role in (before["Role"], after["Role"])
    }
    assert len(hashes) == 2


def test_rendering_ignores_the_order_of_catalogs_and_snapshots() -> None:
    obj, snapshots = CASES["catalogs"]
    reordered = copy.deepcopy(obj)
    reordered["spec"]["catalogs"].reverse()
    again = render_runtime_rbac(reordered, list(reversed(snapshots)))
    assert [dump_manifest(o) for o in again] == [dump_manifest(o) for o in render("catalogs")]


# ---------------------------------------------------------------- objects and names


def test_the_service_account_mounts_its_token_and_the_binding_names_it() -> None:
    objects = by_kind(render("catalogs"))
    assert objects["ServiceAccount"]["automountServiceAccountToken"] is True
    name = runtime_rbac_name("support")
    assert all(obj["metadata"]["name"] == name for obj in objects.values())
    assert objects["RoleBinding"]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": name,
    }
    assert objects["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": name, "namespace": "demo"}
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_are_labelled_and_owned_like_the_rayservice(case: str) -> None:
    obj, snapshots = CASES[case]
    rayservice = render_rayservice(obj, snapshots, OperatorConfig())
    for rendered in render(case):
        meta = rendered["metadata"]
        assert meta["namespace"] == "demo"
        assert meta["labels"] == rayservice["metadata"]["labels"]
        assert meta["labels"][LABEL_MANAGED_BY] == "lorafleet-operator"
        assert meta["labels"][LABEL_LORAMODEL] == obj["metadata"]["name"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "lorafleet.dev/v1alpha1",
                "kind": "LoRAModel",
                "name": obj["metadata"]["name"],
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ]
        assert set(meta["annotations"]) == {ANNOTATION_SPEC_HASH}


def test_without_uid_no_owner_reference_is_rendered() -> None:
    obj = loramodel("qwen", with_catalogs("a"), uid=None)
    for rendered in render_runtime_rbac(obj, [snapshot("a")]):
        assert "ownerReferences" not in rendered["metadata"]


@pytest.mark.parametrize("name", ["q", "qwen", "a" * 47, "a" * 55, "a" * 56, NAME_63])
def test_names_are_labels_of_at_most_63_characters_for_any_loramodel_name(name: str) -> None:
    rbac_name = runtime_rbac_name(name)
    assert len(rbac_name) <= 63
    assert DNS1035.fullmatch(rbac_name), rbac_name
    assert "--" not in rbac_name
    assert rbac_name != rayservice_name(name)
    assert not KUBERAY_CLUSTER_NAME.fullmatch(rbac_name)
    assert runtime_rbac_name(name) == rbac_name


def test_names_that_fit_read_naturally_and_long_ones_are_stable() -> None:
    assert runtime_rbac_name("qwen") == "qwen-runtime"
    assert runtime_rbac_name("a" * 55) == "a" * 55 + "-runtime"
    # A fixed expectation: changing the rule would orphan every existing ServiceAccount.
    assert runtime_rbac_name(NAME_63) == (
        "support-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-a6a78cde-runtime"
    )
    long_names = [NAME_63, NAME_63[:-1] + "2", NAME_63[:-1] + "3"]
    assert len({runtime_rbac_name(n) for n in long_names}) == len(long_names)


def test_a_63_character_loramodel_renders_names_that_fit() -> None:
    for rendered in render("long-name"):
        assert len(rendered["metadata"]["name"]) <= 63
    assert len(rayservice_name(NAME_63)) <= 47


def test_a_name_that_cannot_be_a_label_is_refused() -> None:
    with pytest.raises(InvalidSpecError):
        runtime_rbac_name("Qwen")


# ---------------------------------------------------------------- the pods and the user's SA


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_ray_pod_runs_as_the_rendered_service_account(case: str) -> None:
    obj, snapshots = CASES[case]
    cluster = render_rayservice(obj, snapshots, OperatorConfig())["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]
    ]
    service_account = by_kind(render(case))["ServiceAccount"]["metadata"]["name"]
    assert [pod["serviceAccountName"] for pod in pods] == [service_account] * len(pods)


def test_a_user_service_account_renders_nothing_and_the_pods_use_it() -> None:
    obj = loramodel("qwen", with_catalogs("a", serviceAccountName="llm-serving"))
    snapshots = [snapshot("a", secret="keys", shards=2)]
    assert render_runtime_rbac(obj, snapshots) == []
    cluster = render_rayservice(obj, snapshots, OperatorConfig())["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == "llm-serving"
    for group in cluster["workerGroupSpecs"]:
        assert group["template"]["spec"]["serviceAccountName"] == "llm-serving"


def test_the_revoked_role_is_the_same_role_without_rules() -> None:
    obj, snapshots = CASES["catalogs"]
    role = by_kind(render_runtime_rbac(obj, snapshots))["Role"]
    user_owned = copy.deepcopy(obj)
    user_owned["spec"]["serviceAccountName"] = "llm-serving"
    revoked = render_revoked_runtime_role(user_owned)
    assert revoked["rules"] == []
    assert revoked["kind"] == "Role"
    for key in ("name", "namespace", "labels", "ownerReferences"):
        assert revoked["metadata"][key] == role["metadata"][key]
    assert (
        revoked["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        != role["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    )


# ---------------------------------------------------------------- the reconciler's decisions


class FakeKube:
    """The KubeClient verbs the LoRAModel reconciler uses, over a dict; ``forbidden`` kinds
    answer 403 to writes as an API server does to an operator without the verb."""

    def __init__(self, *catalogs: dict[str, Any], forbidden: tuple[str, ...] = ()) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {
            ("AdapterCatalog", c["metadata"]["name"]): c for c in catalogs
        }
        self.forbidden = forbidden
        self.writes: list[str] = []
        self.status: dict[str, Any] | None = None

    async def get(self, *args: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(("AdapterCatalog", args[-1])))

    async def _get(self, kind: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, name)))

    async def _apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        if obj["kind"] in self.forbidden:
            raise KubeApiError(
                403,
                f'{obj["kind"].lower()}s "{name}" is forbidden: User "system:serviceaccount:'
                f'ops:lorafleet" cannot patch resource "{obj["kind"].lower()}s"',
            )
        self.objects[(obj["kind"], name)] = copy.deepcopy(obj)
        self.writes.append(f"{obj['kind']}/{name}")
        return copy.deepcopy(obj)

    async def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get("RayService", name)

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return await self._apply(obj)

    async def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get("ServiceAccount", name)

    async def get_role(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get("Role", name)

    async def get_role_binding(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get("RoleBinding", name)

    async def apply_service_account(self, obj: dict[str, Any]) -> None:
        await self._apply(obj)

    async def apply_role(self, obj: dict[str, Any]) -> None:
        await self._apply(obj)

    async def apply_role_binding(self, obj: dict[str, Any]) -> None:
        await self._apply(obj)

    async def patch_status(self, *args: Any) -> dict[str, Any]:
        self.status = args[-1]
        return {}


def reconcile(kube: FakeKube, body: dict[str, Any]) -> Outcome:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return asyncio.run(reconcile_loramodel(kube, body, OperatorConfig(), now=now))  # type: ignore[arg-type]


def test_the_rbac_objects_are_written_before_the_rayservice_and_only_when_changed() -> None:
    kube = FakeKube(catalog("a", secret="keys", shards=1))
    body = loramodel("qwen", with_catalogs("a"))
    outcome = reconcile(kube, body)
    assert kube.writes == [
        "ServiceAccount/qwen-runtime",
        "Role/qwen-runtime",
        "RoleBinding/qwen-runtime",
        "RayService/qwen",
    ]
    assert outcome.rbac_applied == (
        "ServiceAccount demo/qwen-runtime",
        "Role demo/qwen-runtime",
        "RoleBinding demo/qwen-runtime",
    )
    kube.writes.clear()
    assert reconcile(kube, body).rbac_applied == ()
    assert kube.writes == []
    # The index doubled: only the Role follows.
    kube.objects[("AdapterCatalog", "a")] = catalog("a", secret="keys", shards=2)
    reconcile(kube, body)
    assert kube.writes == ["Role/qwen-runtime"]


def test_a_forbidden_role_is_a_degraded_condition_and_no_rayservice_is_written() -> None:
    kube = FakeKube(catalog("a", secret="keys", shards=1), forbidden=("Role",))
    body = loramodel("qwen", with_catalogs("a"))
    with pytest.raises(KubeApiError) as caught:
        reconcile(kube, body)
    assert caught.value.status == 403
    assert kube.writes == ["ServiceAccount/qwen-runtime"]
    assert kube.status is not None
    conditions = {c["type"]: c for c in kube.status["conditions"]}
    degraded = conditions["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "OperatorForbidden")
    assert "The operator may not write Role demo/qwen-runtime" in degraded["message"]
    assert "get, create and patch on roles (rbac.authorization.k8s.io)" in degraded["message"]
    assert "cannot patch resource" in degraded["message"]
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False",
        "OperatorForbidden",
    )
    assert conditions["Progressing"]["status"] == "False"
    # The Event the controller posts says the same.
    assert str(caught.value.message) == degraded["message"]


def test_other_api_errors_are_apply_failures() -> None:
    kube = FakeKube()
    body = loramodel("qwen", with_catalogs())

    async def refuse(obj: dict[str, Any]) -> None:
        raise KubeApiError(422, "RoleBinding.rbac.authorization.k8s.io is invalid")

    kube.apply_role_binding = refuse  # type: ignore[method-assign]
    with pytest.raises(KubeApiError):
        reconcile(kube, body)
    assert kube.status is not None
    degraded = {c["type"]: c for c in kube.status["conditions"]}["Degraded"]
    assert degraded["reason"] == "ApplyFailed"
    assert degraded["message"].startswith(
        "Could not write RoleBinding demo/qwen-runtime (HTTP 422)"
    )


def test_a_user_service_account_empties_our_role_and_leaves_others_alone() -> None:
    kube = FakeKube(catalog("a", secret="keys", shards=1))
    body = loramodel("qwen", with_catalogs("a"))
    reconcile(kube, body)
    kube.writes.clear()

    user_owned = loramodel("qwen", with_catalogs("a", serviceAccountName="llm-serving"))
    reconcile(kube, user_owned)
    assert kube.writes == ["Role/qwen-runtime", "RayService/qwen"]
    assert kube.objects[("Role", "qwen-runtime")]["rules"] == []
    kube.writes.clear()
    reconcile(kube, user_owned)
    assert kube.writes == []

    # A Role of that name that this operator did not render is not touched.
    stranger = FakeKube(catalog("a"))
    stranger.objects[("Role", "qwen-runtime")] = {
        "kind": "Role",
        "metadata": {"name": "qwen-runtime", "labels": {"team": "ml"}},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }
    reconcile(stranger, user_owned)
    assert stranger.writes == ["RayService/qwen"]
