"""LoRAModel → RayService, and the LoRAModel's status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lorafleet_api import names
from lorafleet_operator.builders import render_rayservice
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.k8s.client import JsonObj, KubeClient
from lorafleet_operator.model.catalog import CatalogSnapshot
from lorafleet_operator.model.config import OperatorConfig
from lorafleet_operator.model.loramodel import LoRAModel, SpecWarning
from lorafleet_operator.reconcile.status_patch import write_status
from lorafleet_operator.status import (
    compute_loramodel_status,
    invalid_spec_status,
    warnings_to_report,
)


@dataclass(frozen=True)
class Outcome:
    """What one reconciliation did, for events and logs."""

    rayservice: str
    applied: bool
    status_patched: bool
    status: JsonObj
    # Spec warnings the user has not been told about for this generation yet.
    warnings: tuple[SpecWarning, ...] = ()


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
    """Apply the RayService when our desired spec changed, then write status if it changed.

    Raises InvalidSpecError (after recording it in status) for a spec that cannot render."""
    namespace = body["metadata"].get("namespace") or "default"
    name = body["metadata"]["name"]
    previous = body.get("status") or {}
    try:
        model = LoRAModel.from_object(body)
        snapshots = await read_catalog_snapshots(kube, model)
        desired = render_rayservice(body, snapshots, config)
    except InvalidSpecError as err:
        generation = int(body["metadata"].get("generation") or 0)
        status = invalid_spec_status(generation, err.message, previous, now=now)
        await write_status(kube, namespace, name, previous, status)
        raise

    rs_name = desired["metadata"]["name"]
    live = await kube.get_rayservice(namespace, rs_name)
    applied = False
    if live is None or _hash(live) != _hash(desired):
        # Our own hash decides, never a diff against the live object: the API server adds
        # defaults there, and any write to rayClusterConfig starts a new Ray cluster.
        live = await kube.apply(desired)
        applied = True
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
    )


def _hash(obj: Mapping[str, Any]) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(names.ANNOTATION_SPEC_HASH)
    return str(value) if value is not None else None
