"""The status of a LoRAModel, computed from what the operator observed. Pure: ``now`` comes in.

Conditions:
- ``Ready``: clients can use the endpoint with the current spec. True only when every
  RayService signal agrees (see ``rayservice.py``) and every referenced catalog exists.
- ``Progressing``: a RayService is being created, upgraded or deployed.
- ``Degraded``: something needs a person: a Serve deployment failed, KubeRay refused the
  RayService, a referenced AdapterCatalog is missing, or the API server refused an object the
  operator writes (``OperatorForbidden`` when the operator lacks a permission, else
  ``ApplyFailed``); what was applied before keeps serving.

``status.warnings``: what the user should change in a spec that still works (a deprecated
router policy name), one message each; absent when there is nothing to say. The reconciler
posts each as a Warning Event when it is new (:func:`warnings_to_report`).

Debounce: RayService signals flap (a proxy restarts, an endpoint drops for seconds). Once
Ready is True it turns False only after the RayService has said "not serving" for
``debounce_seconds``; until then Ready stays True and ``status.notReadySince`` records when
the signals started. Missing catalogs and a missing RayService are not flaps and count at
once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from lorafleet_api.contract import EngineKind
from lorafleet_operator.builders.names import endpoint_url, rayservice_name
from lorafleet_operator.builders.ranks import effective_max_lora_rank
from lorafleet_operator.model.catalog import CatalogSnapshot
from lorafleet_operator.model.loramodel import LoRAModel, SpecWarning
from lorafleet_operator.status.conditions import (
    ConditionStatus,
    bounded,
    find_condition,
    format_time,
    parse_time,
    set_condition,
)
from lorafleet_operator.status.rayservice import NotReady, RayServiceHealth, assess_rayservice

READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"

MAX_INCOMPATIBLE_NAMES: Final = 20
NOT_READY_SINCE: Final = "notReadySince"
WARNINGS: Final = "warnings"
# Reasons of an ApplyFailure: the API server said 403, or refused otherwise.
OPERATOR_FORBIDDEN: Final = "OperatorForbidden"
APPLY_FAILED: Final = "ApplyFailed"


@dataclass(frozen=True)
class ApplyFailure:
    """The API server refused an object the operator writes for the LoRAModel: one-word
    reason (``OPERATOR_FORBIDDEN`` or ``APPLY_FAILED``) and what to do about it."""

    reason: str
    message: str


def compute_loramodel_status(
    model: LoRAModel,
    rayservice: Mapping[str, Any] | None,
    snapshots: Sequence[CatalogSnapshot],
    previous_status: Mapping[str, Any] | None,
    *,
    now: datetime,
    debounce_seconds: float,
    apply_failure: ApplyFailure | None = None,
) -> dict[str, Any]:
    """The LoRAModel's whole ``status`` (handlers patch it only when it differs).

    ``snapshots`` should hold one entry per referenced catalog; a referenced catalog without
    one counts as not found. ``rayservice`` is the live object, None when it does not exist.
    ``apply_failure``: this reconcile could not write what the spec asks for. It makes the
    LoRAModel Degraded and not Progressing; Ready still follows the RayService that exists
    (it keeps serving the spec applied before), or names the failure when there is none.
    """
    previous = previous_status or {}
    generation = model.generation or 0
    max_lora_rank = effective_max_lora_rank(model.spec, snapshots)
    name = rayservice_name(model.name)
    endpoint = endpoint_url(model.name, model.namespace)
    adapters = count_adapters(_referenced(model, snapshots), max_lora_rank, model.spec.engine.kind)
    missing = _missing_catalogs(model, snapshots)
    health = assess_rayservice(rayservice) if rayservice is not None else None
    where = f"{model.namespace}/{name}"

    # Ready, before debouncing.
    ready_now: NotReady | None
    flappy = False
    if missing:
        ready_now = NotReady("CatalogNotFound", _missing_message(missing, model.namespace))
    elif health is None and apply_failure is not None:
        ready_now = NotReady(apply_failure.reason, apply_failure.message)
    elif health is None:
        ready_now = NotReady("RayServiceMissing", f"RayService {where} does not exist yet")
    else:
        ready_now = health.not_ready
        flappy = ready_now is not None

    was_ready = _was_ready(previous)
    not_ready_since: str | None = None
    if ready_now is None:
        ready: tuple[ConditionStatus, str, str] = (
            "True",
            "Serving",
            f"Serving {model.model_id} at {endpoint} with {adapters['served']} adapters",
        )
    elif was_ready and flappy and not _debounce_expired(previous, now, debounce_seconds):
        # Keep the previous Ready (reason and message too) until the signals persist.
        held = find_condition(previous.get("conditions"), READY) or {}
        ready = ("True", str(held.get("reason") or "Serving"), str(held.get("message") or ""))
        not_ready_since = str(previous.get(NOT_READY_SINCE) or format_time(now))
    else:
        ready = ("False", ready_now.reason, ready_now.message)

    progressing: tuple[ConditionStatus, str, str]
    if apply_failure is not None:
        progressing = ("False", apply_failure.reason, apply_failure.message)
    else:
        progressing = _progressing(health, where)
    degraded = _degraded(health, missing, model.namespace, apply_failure)

    conditions = previous.get("conditions")
    for condition_type, (condition_status, reason, message) in (
        (READY, ready),
        (PROGRESSING, progressing),
        (DEGRADED, degraded),
    ):
        conditions = set_condition(
            conditions,
            condition_type=condition_type,
            status=condition_status,
            reason=reason,
            message=message,
            observed_generation=generation,
            now=now,
        )

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conditions,
        "rayServiceName": name,
        "endpoint": endpoint,
        "modelId": model.model_id,
        "maxLoraRank": max_lora_rank,
        "adapters": adapters,
    }
    if not_ready_since is not None:
        status[NOT_READY_SINCE] = not_ready_since
    warnings = model.spec.warnings()
    if warnings:
        status[WARNINGS] = [bounded(warning.message) for warning in warnings]
    return status


def warnings_to_report(
    model: LoRAModel, previous_status: Mapping[str, Any] | None
) -> tuple[SpecWarning, ...]:
    """The spec's warnings to post as Events now: all of them for a generation not yet
    observed (each edit is told again), else those the previous status did not hold yet (an
    operator upgrade that starts warning). Drift checks and restarts post nothing new."""
    previous = previous_status or {}
    warnings = model.spec.warnings()
    if previous.get("observedGeneration") != (model.generation or 0):
        return warnings
    known = set(previous.get(WARNINGS) or ())
    return tuple(warning for warning in warnings if bounded(warning.message) not in known)


def invalid_spec_status(
    generation: int,
    message: str,
    previous_status: Mapping[str, Any] | None,
    *,
    now: datetime,
) -> dict[str, Any]:
    """Status for a spec the operator cannot render (InvalidSpecError): not Ready, Degraded,
    nothing progressing. Fields from the last good spec stay, so users still see them."""
    previous = dict(previous_status or {})
    previous.pop(NOT_READY_SINCE, None)
    conditions = previous.get("conditions")
    settings: tuple[tuple[str, ConditionStatus], ...] = (
        (READY, "False"),
        (PROGRESSING, "False"),
        (DEGRADED, "True"),
    )
    for condition_type, status in settings:
        conditions = set_condition(
            conditions,
            condition_type=condition_type,
            status=status,
            reason="InvalidSpec",
            message=message,
            observed_generation=generation,
            now=now,
        )
    return {**previous, "observedGeneration": generation, "conditions": conditions}


def count_adapters(
    snapshots: Iterable[CatalogSnapshot], max_lora_rank: int, engine_kind: EngineKind = "vllm"
) -> dict[str, Any]:
    """Valid adapters an engine of ``engine_kind`` can load and those it cannot.

    Served: adapters the kind can serve (``adapter_support``), for vllm only those with rank
    <= max_lora_rank (PEFT loads any rank); incompatible: the other valid ones. Counts come
    from the catalogs' rank histograms (vllm) and per-engine counts (peft); names of
    incompatible adapters from their bounded adapter lists, so ``incompatibleNames`` may be
    shorter than ``incompatible``."""
    served = incompatible = 0
    names: set[str] = set()
    for snapshot in snapshots:
        if not snapshot.found:
            continue
        if engine_kind == "vllm":
            # The histogram counts exactly the adapters vLLM can serve.
            served_here = sum(
                count for rank, count in snapshot.rank_histogram.items() if rank <= max_lora_rank
            )
        else:
            served_here = snapshot.servable_by(engine_kind)
        served += served_here
        incompatible += max(snapshot.valid_adapters - served_here, 0)
        names.update(
            a.name
            for a in snapshot.adapters
            if engine_kind in a.refused_by or (engine_kind == "vllm" and a.rank > max_lora_rank)
        )
    return {
        "served": served,
        "incompatible": incompatible,
        "incompatibleNames": sorted(names)[:MAX_INCOMPATIBLE_NAMES],
    }


def _referenced(model: LoRAModel, snapshots: Iterable[CatalogSnapshot]) -> list[CatalogSnapshot]:
    referenced = {catalog.name for catalog in model.spec.catalogs}
    return [snapshot for snapshot in snapshots if snapshot.name in referenced]


def _missing_catalogs(model: LoRAModel, snapshots: Iterable[CatalogSnapshot]) -> list[str]:
    found = {snapshot.name for snapshot in snapshots if snapshot.found}
    return sorted(catalog.name for catalog in model.spec.catalogs if catalog.name not in found)


def _missing_message(missing: Sequence[str], namespace: str) -> str:
    names = ", ".join(f"{namespace}/{name}" for name in missing)
    noun = "AdapterCatalog" if len(missing) == 1 else "AdapterCatalogs"
    verb = "does" if len(missing) == 1 else "do"
    return f"{noun} {names} {verb} not exist; their adapters cannot be served"


def _was_ready(previous: Mapping[str, Any]) -> bool:
    condition = find_condition(previous.get("conditions"), READY)
    return condition is not None and condition.get("status") == "True"


def _debounce_expired(previous: Mapping[str, Any], now: datetime, debounce_seconds: float) -> bool:
    since_text = previous.get(NOT_READY_SINCE)
    since = parse_time(str(since_text)) if since_text else None
    if since is None:
        # First not-ready observation: the window starts now.
        return debounce_seconds <= 0
    return (now - since).total_seconds() >= debounce_seconds


def _progressing(health: RayServiceHealth | None, where: str) -> tuple[ConditionStatus, str, str]:
    if health is None:
        return ("True", "Creating", f"Creating RayService {where}")
    if health.invalid:
        return ("False", "RayServiceInvalid", f"KubeRay rejected RayService {where}")
    if health.failures:
        return ("False", "ServeDeployFailed", f"Serve deployment failed on RayService {where}")
    if not health.current:
        return ("True", "Reconciling", f"KubeRay is applying the latest spec of {where}")
    if health.upgrading:
        detail = f": {health.upgrade_message}" if health.upgrade_message else ""
        return ("True", "Upgrading", f"RayService {where} is upgrading its Ray cluster{detail}")
    if health.not_ready is not None:
        detail = "; ".join(health.progress) or health.not_ready.message
        return ("True", "Deploying", bounded(detail))
    return ("False", "Deployed", f"RayService {where} serves the latest spec")


def _degraded(
    health: RayServiceHealth | None,
    missing: Sequence[str],
    namespace: str,
    apply_failure: ApplyFailure | None,
) -> tuple[ConditionStatus, str, str]:
    problems: list[tuple[str, str]] = []
    if apply_failure is not None:
        problems.append((apply_failure.reason, apply_failure.message))
    if health is not None and health.invalid:
        problems.append(
            ("RayServiceInvalid", f"KubeRay rejected the RayService: {health.kuberay_message}")
        )
    if health is not None and health.failures:
        problems.append(("ServeDeployFailed", "; ".join(health.failures)))
    if missing:
        problems.append(("CatalogNotFound", _missing_message(missing, namespace)))
    if not problems:
        return ("False", "AsExpected", "No problems observed")
    return ("True", problems[0][0], bounded("; ".join(message for _, message in problems)))
