"""LoRAModel → runtime RBAC and RayService, and the LoRAModel's status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

from lorafleet_api import names
from lorafleet_operator.builders import (
    render_rayservice,
    render_revoked_runtime_role,
    render_runtime_rbac,
)
from lorafleet_operator.constants import RAYSERVICE_KIND
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.k8s.client import JsonObj, KubeApiError, KubeClient
from lorafleet_operator.model.catalog import CatalogSnapshot
from lorafleet_operator.model.config import OperatorConfig
from lorafleet_operator.model.loramodel import LoRAModel, SpecWarning
from lorafleet_operator.reconcile.status_patch import write_status
from lorafleet_operator.status import (
    ApplyFailure,
    compute_loramodel_status,
    invalid_spec_status,
    warnings_to_report,
)
from lorafleet_operator.status.loramodel import APPLY_FAILED, OPERATOR_FORBIDDEN

T = TypeVar("T")

# What the operator needs, per kind it writes for a LoRAModel, named in a 403's message.
_PERMISSIONS: Final = {
    RAYSERVICE_KIND: "get, create and patch on rayservices (ray.io)",
    "ServiceAccount": "get, create and patch on serviceaccounts",
    "Role": (
        "get, create and patch on roles (rbac.authorization.k8s.io), and itself get on the "
        "configmaps, secrets and adaptercatalogs the Role grants"
    ),
    "RoleBinding": (
        "get, create and patch on rolebindings (rbac.authorization.k8s.io), and itself get on "
        "the configmaps, secrets and adaptercatalogs the bound Role grants"
    ),
}


@dataclass(frozen=True)
class Outcome:
    """What one reconciliation did, for events and logs."""

    rayservice: str
    applied: bool
    status_patched: bool
    status: JsonObj
    # Spec warnings the user has not been told about for this generation yet.
    warnings: tuple[SpecWarning, ...] = ()
    # "Kind namespace/name" of each runtime RBAC object written.
    rbac_applied: tuple[str, ...] = ()


class ApplyRefusedError(KubeApiError):
    """The API server refused to read or write one object of the LoRAModel's; the message
    names it and, for a 403, the permission the operator lacks. Already in the status."""

    def __init__(self, failure: ApplyFailure, status: int) -> None:
        super().__init__(status, failure.message)
        self.failure = failure


async def read_catalog_snapshots(kube: KubeClient, model: LoRAModel) -> list[CatalogSnapshot]:
    snapshots = []
    for ref in model.spec.catalogs:
        obj = await kube.get(
            names.API_GROUP,
            names.API_VERSION,
            names.ADAPTERCATALOG_PLURAL,
            model.namespace,
            ref.name,
        )
        snapshots.append(
            CatalogSnapshot.missing(ref.name, model.namespace)
            if obj is None
            else CatalogSnapshot.from_object(obj)
        )
    return snapshots


async def reconcile_loramodel(
    kube: KubeClient, body: Mapping[str, Any], config: OperatorConfig, *, now: datetime
) -> Outcome:
    """Apply the runtime's ServiceAccount, Role and RoleBinding, then the RayService, each only
    when our desired object changed; then write status if it changed.

    Raises InvalidSpecError (after recording it in status) for a spec that cannot render, and
    ApplyRefusedError (after recording it in status) when the API server refuses a read or
    write: the RayService is not written before its pods' ServiceAccount and grants are."""
    namespace = body["metadata"].get("namespace") or "default"
    name = body["metadata"]["name"]
    previous = body.get("status") or {}
    try:
        model = LoRAModel.from_object(body)
        snapshots = await read_catalog_snapshots(kube, model)
        desired = render_rayservice(body, snapshots, config)
        rbac = render_runtime_rbac(body, snapshots)
        revoked = render_revoked_runtime_role(body) if model.spec.service_account_name else None
    except InvalidSpecError as err:
        generation = int(body["metadata"].get("generation") or 0)
        status = invalid_spec_status(generation, err.message, previous, now=now)
        await write_status(kube, namespace, name, previous, status)
        raise

    rs_name = desired["metadata"]["name"]
    live: JsonObj | None = None
    applied = False
    try:
        live = await _guarded("read", desired, kube.get_rayservice(namespace, rs_name))
        rbac_applied = await apply_runtime_rbac(kube, rbac)
        if revoked is not None:
            await revoke_runtime_role(kube, model, revoked)
        if live is None or _hash(live) != _hash(desired):
            # Our own hash decides, never a diff against the live object: the API server adds
            # defaults there, and any write to rayClusterConfig starts a new Ray cluster.
            live = await _guarded("write", desired, kube.apply(desired))
            applied = True
    except ApplyRefusedError as err:
        status = compute_loramodel_status(
            model,
            live,
            snapshots,
            previous,
            now=now,
            debounce_seconds=config.debounce_seconds,
            apply_failure=err.failure,
        )
        await write_status(kube, namespace, name, previous, status)
        raise
    status = compute_loramodel_status(
        model, live, snapshots, previous, now=now, debounce_seconds=config.debounce_seconds
    )
    patched = await write_status(kube, namespace, name, previous, status)
    return Outcome(
        rayservice=f"{namespace}/{rs_name}",
        applied=applied,
        status_patched=patched,
        status=status,
        warnings=warnings_to_report(model, previous),
        rbac_applied=tuple(rbac_applied),
    )


async def apply_runtime_rbac(kube: KubeClient, objects: list[JsonObj]) -> list[str]:
    """Server-side apply each object (ServiceAccount, Role, RoleBinding, in that order) that is
    missing or whose spec-hash annotation differs from ours; "Kind namespace/name" of each
    one written. Raises ApplyRefusedError."""
    written = []
    for obj in objects:
        get, apply = _rbac_verbs(kube, obj["kind"])
        meta = obj["metadata"]
        live = await _guarded("read", obj, get(meta["namespace"], meta["name"]))
        if live is None or _hash(live) != _hash(obj):
            await _guarded("write", obj, apply(obj))
            written.append(f"{obj['kind']} {meta['namespace']}/{meta['name']}")
    return written


async def revoke_runtime_role(kube: KubeClient, model: LoRAModel, revoked: JsonObj) -> bool:
    """With ``spec.serviceAccountName`` set, a Role this operator rendered for the LoRAModel
    earlier is applied again without rules, so it grants nothing (the operator has no
    ``delete`` on RBAC objects; garbage collection takes it with the LoRAModel). A Role of
    that name that is not ours is left alone. Whether it was written; raises
    ApplyRefusedError."""
    meta = revoked["metadata"]
    live = await _guarded("read", revoked, kube.get_role(meta["namespace"], meta["name"]))
    if live is None or not _rendered_for(live, model) or _hash(live) == _hash(revoked):
        return False
    await _guarded("write", revoked, kube.apply_role(revoked))
    return True


def _rbac_verbs(
    kube: KubeClient, kind: str
) -> tuple[Callable[[str, str], Awaitable[JsonObj | None]], Callable[[JsonObj], Awaitable[None]]]:
    verbs = {
        "ServiceAccount": (kube.get_service_account, kube.apply_service_account),
        "Role": (kube.get_role, kube.apply_role),
        "RoleBinding": (kube.get_role_binding, kube.apply_role_binding),
    }
    return verbs[kind]


async def _guarded(action: str, obj: Mapping[str, Any], call: Awaitable[T]) -> T:
    """``await call``; a KubeApiError becomes an ApplyRefusedError naming ``obj``."""
    try:
        return await call
    except KubeApiError as err:
        raise ApplyRefusedError(_failure(err, action, obj), err.status) from err


def _failure(err: KubeApiError, action: str, obj: Mapping[str, Any]) -> ApplyFailure:
    kind = str(obj["kind"])
    namespace = obj["metadata"]["namespace"]
    what = f"{kind} {namespace}/{obj['metadata']['name']}"
    if err.status == 403:
        return ApplyFailure(
            OPERATOR_FORBIDDEN,
            f"The operator may not {action} {what}: {err.message}. It needs "
            f"{_PERMISSIONS[kind]} in namespace {namespace}",
        )
    return ApplyFailure(
        APPLY_FAILED, f"Could not {action} {what} (HTTP {err.status}): {err.message}"
    )


def _rendered_for(obj: Mapping[str, Any], model: LoRAModel) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return (
        labels.get(names.LABEL_MANAGED_BY) == names.FIELD_MANAGER
        and labels.get(names.LABEL_LORAMODEL) == model.name
    )


def _hash(obj: Mapping[str, Any]) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(names.ANNOTATION_SPEC_HASH)
    return str(value) if value is not None else None
