"""What the kopf handlers trigger, below them: each trigger's work with its locking, Events,
schedules and background loops, over the reconcilers. No kopf: the handlers translate the
errors raised here (InvalidSpecError → PermanentError, KubeApiError → TemporaryError).

- LoRAModels: :func:`reconcile_model` (create/update/resume, RayService events, the drift
  loop and the re-check when a Ready debounce ends).
- AdapterCatalogs: :func:`sync_catalog` (create/resume/spec change, sync-requested, and the
  catalog loop every ``syncInterval``, with exponential backoff after failures).

Both loops are one task each for all objects rather than kopf timers: kopf puts a finalizer
on every object with a timer, which would block ``kubectl delete`` whenever the operator is
not running (what we own is garbage-collected without our help).

Each reconcile and sync is counted and timed in ``state.metrics`` (:func:`_measured`); a
successful sync also records the catalog's counts, a deletion removes them
(:func:`catalog_deleted`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Iterator, Mapping
from typing import Any

from lorafleet_api import names
from lorafleet_operator.errors import InvalidSpecError, LorafleetError
from lorafleet_operator.k8s.client import TRANSPORT_ERRORS, KubeApiError
from lorafleet_operator.metrics import API_ERROR, CRASH
from lorafleet_operator.model.adaptercatalog import (
    MAX_SYNC_INTERVAL_SECONDS,
    MIN_SYNC_INTERVAL_SECONDS,
    AdapterCatalogSpec,
    parse_duration,
)
from lorafleet_operator.model.loramodel import SpecWarning
from lorafleet_operator.reconcile.adaptercatalog import (
    SyncOutcome,
    loramodels_using,
    sync_adaptercatalog,
)
from lorafleet_operator.reconcile.loramodel import Outcome, reconcile_loramodel
from lorafleet_operator.reconcile.scheduling import (
    BACKOFF_MAX_SECONDS,
    Logger,
    ObjectKey,
    list_watched,
    object_key,
)
from lorafleet_operator.reconcile.state import OperatorState
from lorafleet_operator.status.conditions import parse_time
from lorafleet_operator.status.loramodel import NOT_READY_SINCE

CATALOGS = (names.API_GROUP, names.API_VERSION, names.ADAPTERCATALOG_PLURAL)
LORAMODELS = (names.API_GROUP, names.API_VERSION, names.LORAMODEL_PLURAL)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def _event(
    state: OperatorState, body: Mapping[str, Any], kind: str, reason: str, message: str
) -> None:
    # Our own Events, not kopf's: loops run outside any kopf handler, where kopf has no
    # event queue (kopf.info raises LookupError there).
    await state.kube.post_event(
        dict(body), event_type=kind, reason=reason, message=message, now=_now()
    )


def failure_reason(err: Exception) -> str:
    """The reason a failure is reported under (Events, metrics): a LorafleetError's own,
    ApiError for the API server, Crash for anything else (a bug)."""
    if isinstance(err, LorafleetError):
        return err.reason
    if isinstance(err, KubeApiError):
        return API_ERROR
    return CRASH


@contextlib.contextmanager
def _measured(state: OperatorState, kind: str, catalog: ObjectKey | None = None) -> Iterator[None]:
    """Count and time one reconcile of ``kind``; a failed sync also counts for its catalog.
    Cancellation (shutdown) is not a reconcile that finished: nothing is recorded."""
    started = time.monotonic()
    try:
        yield
    except Exception as err:
        reason = failure_reason(err)
        state.metrics.reconciled(kind, time.monotonic() - started, reason)
        if catalog is not None:
            state.metrics.catalog_sync_failed(*catalog, reason)
        raise
    state.metrics.reconciled(kind, time.monotonic() - started)


# ---------------------------------------------------------------- LoRAModels
async def reconcile_model(state: OperatorState, body: Mapping[str, Any], logger: Logger) -> Outcome:
    """Reconcile one LoRAModel under its lock and report it. Raises InvalidSpecError or
    KubeApiError after recording them (status condition, Event)."""
    key = object_key(body)
    now = _now()
    async with state.model_locks.lock(key):
        with _measured(state, names.LORAMODEL_KIND):
            try:
                outcome = await reconcile_loramodel(state.kube, body, state.config, now=now)
            except InvalidSpecError as err:
                await _event(state, body, "Warning", err.reason, err.message)
                raise
            except KubeApiError as err:
                await _event(state, body, "Warning", "ApplyFailed", err.message)
                raise
    if outcome.applied:
        message = f"Applied RayService {outcome.rayservice}"
        await _event(state, body, "Normal", "Applied", message)
        logger.info(message)
    for warning in unposted_warnings(state, key, outcome):
        await _event(state, body, "Warning", warning.reason, warning.message)
        logger.warning("Warned LoRAModel %s/%s: %s", *key, warning.message)
    since = parse_time(str(outcome.status.get(NOT_READY_SINCE) or ""))
    if since is not None:
        # Ready is being held while the debounce runs; no event may come when it ends, so
        # look again then (otherwise only the drift check would notice).
        elapsed = (now - since).total_seconds()
        delay = max(0.0, state.config.debounce_seconds - elapsed) + 0.5
        _schedule_recheck(state, key, delay, logger)
    return outcome


def unposted_warnings(state: OperatorState, key: ObjectKey, outcome: Outcome) -> list[SpecWarning]:
    """The outcome's warnings that this process has not posted for the generation yet.

    The outcome already leaves out what the LoRAModel's status holds; this covers a body read
    before the previous reconcile wrote that status (a RayService event right after a create
    waits for the lock with the LoRAModel as it was before)."""
    generation = int(outcome.status.get("observedGeneration") or 0)
    posted_generation, posted = state.posted_warnings.get(key, (generation, frozenset()))
    if posted_generation != generation:
        posted = frozenset()
    fresh = [warning for warning in outcome.warnings if warning.message not in posted]
    state.posted_warnings[key] = (generation, posted | {w.message for w in outcome.warnings})
    return fresh


async def reconcile_model_quietly(
    state: OperatorState, body: Mapping[str, Any], logger: Logger
) -> None:
    """:func:`reconcile_model` where nobody retries for us (loops, other objects' events):
    failures are already in the LoRAModel's status and Events, and a bug in one object must
    not stop the caller."""
    try:
        await reconcile_model(state, body, logger)
    except (LorafleetError, KubeApiError):
        pass
    except Exception:
        namespace, name = object_key(body)
        logger.exception("Reconciling LoRAModel %s/%s failed", namespace, name)


async def model_deleted(state: OperatorState, body: Mapping[str, Any]) -> None:
    """Forget a deleted LoRAModel (its lock, posted warnings and a pending re-check) once a
    reconcile in flight has finished (under the same lock)."""
    key = object_key(body)
    async with state.model_locks.lock(key):
        pending = state.rechecks.pop(key, None)
        if pending is not None and not pending.done():
            pending.cancel()
        state.forget_model(key)


def _schedule_recheck(state: OperatorState, key: ObjectKey, delay: float, logger: Logger) -> None:
    pending = state.rechecks.get(key)
    if pending is not None and not pending.done():
        return
    state.rechecks[key] = asyncio.create_task(_recheck(state, key, delay, logger))


async def _recheck(state: OperatorState, key: ObjectKey, delay: float, logger: Logger) -> None:
    await asyncio.sleep(delay)
    state.rechecks.pop(key, None)
    obj = await state.kube.get(*LORAMODELS, *key)
    if obj is not None:
        await reconcile_model_quietly(state, obj, logger)


async def model_of_rayservice(
    state: OperatorState, rayservice: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The live LoRAModel that owns ``rayservice``; None when there is none or it is being
    deleted (the RayService is garbage-collected with it)."""
    owner = (rayservice["metadata"].get("labels") or {}).get(names.LABEL_LORAMODEL)
    if not owner:
        return None
    model = await state.kube.get(*LORAMODELS, rayservice["metadata"]["namespace"], owner)
    if model is None or model["metadata"].get("deletionTimestamp"):
        return None
    return model


async def drift_loop(state: OperatorState, logger: Logger) -> None:
    """Every ``drift_check_seconds``, reconcile every LoRAModel again: a RayService edited or
    deleted behind our back, or a missed watch event, is repaired within one period."""
    while True:
        await asyncio.sleep(state.config.drift_check_seconds)
        # Nothing may end this loop (it runs outside kopf: an exception would stop every
        # later drift check silently); the next pass tries again.
        try:
            for model in await list_watched(state.kube, *LORAMODELS, state.namespaces, logger):
                await reconcile_model_quietly(state, model, logger)
        except Exception:
            logger.exception(
                "Drift check pass failed; the next starts in %s s",
                state.config.drift_check_seconds,
            )


# ---------------------------------------------------------------- AdapterCatalogs
def _sync_interval(body: Mapping[str, Any]) -> float:
    try:
        raw = (body.get("spec") or {}).get("syncInterval")
        seconds = parse_duration(raw or AdapterCatalogSpec.model_fields["sync_interval"].default)
    except ValueError:
        return BACKOFF_MAX_SECONDS
    # A catalog stored before the CRD bounded syncInterval may say 0s: never list (or warn
    # about an invalid spec) without pause.
    return min(max(seconds, MIN_SYNC_INTERVAL_SECONDS), MAX_SYNC_INTERVAL_SECONDS)


async def sync_catalog(state: OperatorState, body: Mapping[str, Any], logger: Logger) -> None:
    """One sync, serialised per catalog; schedules the next one. Never raises for storage
    faults: they are in the catalog's conditions, and the loop retries with backoff."""
    key = object_key(body)
    schedules = state.catalog_schedules
    async with state.catalog_locks.lock(key):
        try:
            with _measured(state, names.ADAPTERCATALOG_KIND, catalog=key):
                outcome = await sync_adaptercatalog(
                    state.kube,
                    body,
                    state.index_cache,
                    now=_now(),
                    concurrency=state.config.catalog_fetch_concurrency,
                )
        except (LorafleetError, KubeApiError) as err:
            # Only an edit helps an invalid spec; the update handler syncs then.
            retry_after = _sync_interval(body) if isinstance(err, InvalidSpecError) else None
            delay = schedules.failed(key, time.monotonic(), retry_after=retry_after)
            reason = failure_reason(err)
            await _event(state, body, "Warning", reason, err.message)
            logger.warning(
                "Sync of AdapterCatalog %s/%s failed (%s), retrying in %.0f s: %s",
                *key,
                reason,
                delay,
                err.message,
            )
            return
        schedules.succeeded(key, time.monotonic(), _sync_interval(body))
        # Under the lock, which a deletion waits for (catalog_deleted): no series is set
        # again after its catalog was forgotten.
        state.metrics.catalog_synced(
            *key,
            found=outcome.found,
            valid=outcome.valid,
            invalid=outcome.invalid,
            seconds=outcome.duration_seconds,
            finished_at=_now().timestamp(),
        )
    await _report_sync(state, body, outcome, logger)
    if outcome.summary_changed:
        await _refresh_models_using(state, key, logger)


async def _report_sync(
    state: OperatorState, body: Mapping[str, Any], outcome: SyncOutcome, logger: Logger
) -> None:
    for reason, message in outcome.changes.messages():
        await _event(state, body, "Normal", reason, message)
    logger.info(
        "Synced AdapterCatalog %s: %d adapters (%d valid, %d invalid), %d configs read, "
        "%d ConfigMaps written in %.2f s (%s)",
        outcome.catalog,
        outcome.found,
        outcome.valid,
        outcome.invalid,
        outcome.configs_read,
        outcome.configmaps_written,
        outcome.duration_seconds,
        ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in outcome.phase_seconds.items()),
    )


async def _refresh_models_using(state: OperatorState, key: ObjectKey, logger: Logger) -> None:
    """LoRAModels that use the catalog get new adapter counts; their RayService is rewritten
    only if the rank bucket (max_lora_rank) moved, as the spec hash decides."""
    try:
        models = await loramodels_using(state.kube, *key)
    except KubeApiError as err:
        logger.warning("Listing LoRAModels using AdapterCatalog %s/%s failed: %s", *key, err)
        return
    for model in models:
        await reconcile_model_quietly(state, model, logger)


def sync_requested(state: OperatorState, body: Mapping[str, Any]) -> bool:
    """Whether ``<group>/sync-requested`` changed since it was last seen. The value seen
    first (at creation or start-up) is only recorded: create/resume sync anyway."""
    key = object_key(body)
    value = (body["metadata"].get("annotations") or {}).get(names.ANNOTATION_SYNC_REQUESTED)
    first = key not in state.sync_requests
    changed = not first and value is not None and value != state.sync_requests[key]
    state.sync_requests[key] = value
    return changed


async def catalog_deleted(state: OperatorState, body: Mapping[str, Any]) -> None:
    """Forget a deleted catalog (its cache, schedule and metric series) once a sync in flight
    has finished and recorded its figures (under the same lock)."""
    key = object_key(body)
    async with state.catalog_locks.lock(key):
        state.forget_catalog(key)


async def catalog_loop(state: OperatorState, logger: Logger) -> None:
    """Every ``catalog_tick_seconds``, sync the catalogs whose time has come, side by side
    (each bounds its own storage requests)."""
    while True:
        await asyncio.sleep(state.config.catalog_tick_seconds)
        # Nothing may end this loop (it runs outside kopf: an exception would stop every
        # later sync silently); the next tick tries again.
        try:
            await _sync_due_catalogs(state, logger)
        except Exception:
            logger.exception("Catalog sync pass failed; the next starts at the next tick")


async def _sync_due_catalogs(state: OperatorState, logger: Logger) -> None:
    catalogs = await list_watched(state.kube, *CATALOGS, state.namespaces, logger)
    now = time.monotonic()
    due = [
        catalog
        for catalog in catalogs
        if not catalog["metadata"].get("deletionTimestamp")
        and state.catalog_schedules.is_due(object_key(catalog), now)
    ]
    results = await asyncio.gather(
        *(sync_catalog(state, catalog, logger) for catalog in due), return_exceptions=True
    )
    for catalog, result in zip(due, results, strict=True):
        if isinstance(result, TRANSPORT_ERRORS):
            # The API server went away mid-sync (a restart): retry with the usual backoff,
            # not the long one kept for bugs.
            key = object_key(catalog)
            delay = state.catalog_schedules.failed(key, time.monotonic())
            logger.warning(
                "Sync of AdapterCatalog %s/%s lost the API server, retrying in %.0f s: %r",
                *key,
                delay,
                result,
            )
        elif isinstance(result, Exception):
            # A bug in one sync must not stop the loop for every catalog.
            key = object_key(catalog)
            logger.error("Sync of AdapterCatalog %s/%s crashed: %r", *key, result)
            state.catalog_schedules.failed(
                key, time.monotonic(), retry_after=state.catalog_schedules.max_backoff_seconds
            )
