"""Render the ServiceAccount, Role and RoleBinding of a LoRAModel's Ray pods.

Pure: the same LoRAModel and catalog snapshots give the same objects, byte for byte. The
runtime (``lorafleet_runtime.adapters.index.KubernetesIndexSource``) reads, in the
LoRAModel's namespace, each referenced AdapterCatalog, its index ConfigMaps and its
credentials Secret, all by name; the Role grants exactly that and nothing more:

- ``get`` only, and every rule lists ``resourceNames``. An empty ``resourceNames`` means
  *every* name to the RBAC authorizer, so a rule without names is left out, never rendered
  empty (a LoRAModel without catalogs gets a Role without rules).
- ConfigMaps: each catalog's manifest and shards ``0 .. N-1`` with
  ``N = max(1, min(MAX_SHARDS, 2 * status.index.shards))``. A sync only ever doubles the
  shard count, so the runtime keeps reading a grown index between that sync and the
  reconcile that follows it (a changed shard count refreshes the LoRAModels of a catalog).
- Secrets: the ``credentialsSecretRef`` of each referenced catalog that exists.

The operator must itself hold every permission it grants (the RBAC API refuses to create a
Role that escalates): it holds ``get`` on these three resources in the namespace.

With ``spec.serviceAccountName`` the pods run as the user's ServiceAccount, which is theirs to
grant: nothing is rendered, and :func:`render_revoked_runtime_role` is what a Role rendered
before becomes (no rules; the operator has no ``delete`` on RBAC objects, and garbage
collection removes them with the LoRAModel).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from lorafleet_api.catalog_index import MAX_SHARDS, manifest_name, shard_name
from lorafleet_api.names import ADAPTERCATALOG_PLURAL, API_GROUP
from lorafleet_operator.builders.manifest import loramodel_object_metadata, with_spec_hash
from lorafleet_operator.builders.names import runtime_rbac_name
from lorafleet_operator.model.catalog import CatalogSnapshot
from lorafleet_operator.model.loramodel import LoRAModel

RBAC_API_GROUP: Final = "rbac.authorization.k8s.io"
RBAC_API_GROUP_VERSION: Final = f"{RBAC_API_GROUP}/v1"
SERVICE_ACCOUNT_KIND: Final = "ServiceAccount"
ROLE_KIND: Final = "Role"
ROLE_BINDING_KIND: Final = "RoleBinding"
# What the Role may grant: ``get`` of single objects by name, never list or watch.
RUNTIME_VERBS: Final = ("get",)


def runtime_service_account(model: LoRAModel) -> str:
    """The ServiceAccount every Ray pod of ``model`` runs as: ``spec.serviceAccountName``
    when set, else the one rendered here."""
    return model.spec.service_account_name or runtime_rbac_name(model.name)


def index_shard_grant(shards: int) -> int:
    """How many shard ConfigMaps of a catalog with ``shards`` shards the Role names: twice as
    many (the next sync may double them), at least one, at most ``MAX_SHARDS``."""
    return max(1, min(MAX_SHARDS, 2 * shards))


def render_runtime_rbac(
    loramodel: Mapping[str, Any], snapshots: Iterable[CatalogSnapshot]
) -> list[dict[str, Any]]:
    """``[ServiceAccount, Role, RoleBinding]`` for the Ray pods of a LoRAModel object (as read
    from the API server or a file); ``[]`` when ``spec.serviceAccountName`` names the user's
    own. ``snapshots`` are the referenced catalogs (others are ignored; a missing one counts
    as not synced and without credentials). Raises InvalidSpecError."""
    model = LoRAModel.from_object(loramodel)
    if model.spec.service_account_name:
        return []
    return [
        _service_account(model),
        _role(model, runtime_rules(model, snapshots)),
        _role_binding(model),
    ]


def render_revoked_runtime_role(loramodel: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime Role of a LoRAModel with no rules: what a Role rendered earlier becomes
    once ``spec.serviceAccountName`` takes over. Raises InvalidSpecError."""
    return _role(LoRAModel.from_object(loramodel), [])


def runtime_rules(model: LoRAModel, snapshots: Iterable[CatalogSnapshot]) -> list[dict[str, Any]]:
    """The Role's rules, names sorted; rules that would name nothing are left out."""
    referenced = {catalog.name for catalog in model.spec.catalogs}
    found = {
        snapshot.name: snapshot
        for snapshot in snapshots
        if snapshot.found and snapshot.name in referenced
    }
    configmaps: set[str] = set()
    for catalog in referenced:
        snapshot = found.get(catalog)
        shards = index_shard_grant(snapshot.index_shards if snapshot else 0)
        configmaps.add(manifest_name(catalog))
        configmaps.update(shard_name(catalog, shard) for shard in range(shards))
    secrets = {
        snapshot.credentials_secret for snapshot in found.values() if snapshot.credentials_secret
    }
    candidates = (
        (API_GROUP, ADAPTERCATALOG_PLURAL, referenced),
        ("", "configmaps", configmaps),
        ("", "secrets", secrets),
    )
    return [
        {
            "apiGroups": [group],
            "resources": [resource],
            "resourceNames": sorted(names),
            "verbs": list(RUNTIME_VERBS),
        }
        for group, resource, names in candidates
        if names
    ]


def _metadata(model: LoRAModel) -> dict[str, Any]:
    # Garbage-collected with the LoRAModel: the operator never deletes RBAC objects. No
    # blockOwnerDeletion: nothing needs them once the LoRAModel is gone.
    return loramodel_object_metadata(
        runtime_rbac_name(model.name),
        model.name,
        model.namespace,
        model.uid,
        block_owner_deletion=False,
    )


def _service_account(model: LoRAModel) -> dict[str, Any]:
    return with_spec_hash(
        {
            "apiVersion": "v1",
            "kind": SERVICE_ACCOUNT_KIND,
            "metadata": _metadata(model),
            # Explicit: the runtime reads the API with this token, whatever a cluster's
            # admission defaults say.
            "automountServiceAccountToken": True,
        }
    )


def _role(model: LoRAModel, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return with_spec_hash(
        {
            "apiVersion": RBAC_API_GROUP_VERSION,
            "kind": ROLE_KIND,
            "metadata": _metadata(model),
            "rules": rules,
        }
    )


def _role_binding(model: LoRAModel) -> dict[str, Any]:
    name = runtime_rbac_name(model.name)
    return with_spec_hash(
        {
            "apiVersion": RBAC_API_GROUP_VERSION,
            "kind": ROLE_BINDING_KIND,
            "metadata": _metadata(model),
            "roleRef": {"apiGroup": RBAC_API_GROUP, "kind": ROLE_KIND, "name": name},
            "subjects": [
                {"kind": SERVICE_ACCOUNT_KIND, "name": name, "namespace": model.namespace}
            ],
        }
    )
