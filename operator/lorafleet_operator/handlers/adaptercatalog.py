"""AdapterCatalog handlers: sync on create/resume/spec change, at once when the annotation
``lorafleet.dev/sync-requested`` changes, and every ``syncInterval`` from one loop.

One loop for all catalogs rather than ``@kopf.timer``: kopf puts a finalizer on every object
with a timer, which would block ``kubectl delete adaptercatalog`` while the operator is down
(the index ConfigMaps are garbage-collected without our help). A failed sync is retried by
the same loop with exponential backoff; kopf's own retries stay out of it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import time
from dataclasses import dataclass
from typing import Any, Final, cast

import kopf

from lorafleet_operator import constants
from lorafleet_operator.errors import InvalidSpecError, LorafleetError
from lorafleet_operator.handlers.loramodel import reconcile as reconcile_loramodel
from lorafleet_operator.k8s.client import KubeApiError
from lorafleet_operator.model.adaptercatalog import AdapterCatalogSpec, parse_duration
from lorafleet_operator.reconcile.adaptercatalog import (
    IndexCache,
    SyncOutcome,
    loramodels_using,
    sync_adaptercatalog,
)

CATALOGS = (constants.API_GROUP, constants.API_VERSION, constants.ADAPTERCATALOG_PLURAL)
# How often the loop looks for catalogs that are due; a catalog's own syncInterval decides.
TICK_SECONDS: Final = float(os.environ.get("LORAFLEET_CATALOG_TICK_SECONDS", "2"))
# Storage requests in flight per catalog (adapter_config.json reads).
FETCH_CONCURRENCY: Final = int(os.environ.get("LORAFLEET_CATALOG_FETCH_CONCURRENCY", "32"))
BACKOFF_FIRST_SECONDS: Final = 5.0
BACKOFF_MAX_SECONDS: Final = 300.0


@dataclass
class Schedule:
    next_due: float  # time.monotonic()
    failures: int = 0


def _key(body: kopf.Body | dict[str, Any]) -> tuple[str, str]:
    return body["metadata"].get("namespace") or "default", body["metadata"]["name"]


def _interval(body: kopf.Body | dict[str, Any]) -> float:
    try:
        raw = (body.get("spec") or {}).get("syncInterval")
        return parse_duration(raw or AdapterCatalogSpec.model_fields["sync_interval"].default)
    except ValueError:
        return BACKOFF_MAX_SECONDS


async def sync(body: kopf.Body, memo: kopf.Memo, logger: Any) -> None:
    """One sync, serialised per catalog; schedules the next one. Never raises for storage
    faults: they are in the catalog's conditions, and the loop retries with backoff."""
    key = _key(body)
    locks: dict[tuple[str, str], asyncio.Lock] = memo.catalog_locks
    schedules: dict[tuple[str, str], Schedule] = memo.catalog_schedules
    async with locks.setdefault(key, asyncio.Lock()):
        schedule = schedules.setdefault(key, Schedule(next_due=0.0))
        try:
            outcome = await sync_adaptercatalog(
                memo.kube,
                body,
                memo.catalog_cache,
                now=_now(),
                concurrency=FETCH_CONCURRENCY,
            )
        except (LorafleetError, KubeApiError) as err:
            schedule.failures += 1
            delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (schedule.failures - 1))
            if isinstance(err, InvalidSpecError):
                delay = _interval(body)  # only an edit helps; the update handler syncs then
            schedule.next_due = time.monotonic() + delay
            reason = err.reason if isinstance(err, LorafleetError) else "ApiError"
            message = err.message
            await memo.kube.post_event(
                dict(body), event_type="Warning", reason=reason, message=message, now=_now()
            )
            logger.warning(
                "Sync of AdapterCatalog %s/%s failed (%s), retrying in %.0f s: %s",
                *key,
                reason,
                delay,
                message,
            )
            return
        schedule.failures = 0
        schedule.next_due = time.monotonic() + _interval(body)
    await _report(body, memo, outcome, logger)
    if outcome.summary_changed:
        await _refresh_loramodels(memo, key, logger)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def _report(body: kopf.Body, memo: kopf.Memo, outcome: SyncOutcome, logger: Any) -> None:
    # Our own Events, not kopf.info: syncs also run in the catalog loop, outside any handler.
    for reason, message in outcome.changes.messages():
        await memo.kube.post_event(
            dict(body), event_type="Normal", reason=reason, message=message, now=_now()
        )
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


async def _refresh_loramodels(memo: kopf.Memo, key: tuple[str, str], logger: Any) -> None:
    """LoRAModels that use the catalog get new adapter counts; their RayService is rewritten
    only if the rank bucket (max_lora_rank) moved, as the spec hash decides."""
    namespace, name = key
    try:
        models = await loramodels_using(memo.kube, namespace, name)
    except KubeApiError as err:
        logger.warning("Listing LoRAModels using AdapterCatalog %s/%s failed: %s", *key, err)
        return
    for model in models:
        try:
            await reconcile_loramodel(kopf.Body(cast(Any, model)), memo, logger)
        except (kopf.PermanentError, kopf.TemporaryError):
            pass  # recorded in the LoRAModel's status; its own handlers retry
        except LookupError:
            # kopf.info outside a handler (this may run in the catalog loop): the status
            # was written before the event, and the drift check posts on its next pass.
            logger.debug("Skipped an event for LoRAModel %s", model["metadata"]["name"])


@kopf.on.startup()
async def start_catalog_loop(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    memo.catalog_cache = IndexCache()
    memo.catalog_locks = {}
    memo.catalog_schedules = {}
    memo.catalog_sync_requests = {}
    memo.catalog_task = asyncio.create_task(_catalog_loop(memo, logger))


@kopf.on.cleanup()
async def stop_catalog_loop(memo: kopf.Memo, **_: Any) -> None:
    task: asyncio.Task[None] | None = memo.get("catalog_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _catalog_loop(memo: kopf.Memo, logger: kopf.Logger) -> None:
    while True:
        await asyncio.sleep(TICK_SECONDS)
        for namespace in memo.get("namespaces") or [None]:
            try:
                catalogs = await memo.kube.list(*CATALOGS, namespace)
            except KubeApiError as err:
                logger.warning("Listing AdapterCatalogs failed: %s", err)
                continue
            now = time.monotonic()
            schedules: dict[tuple[str, str], Schedule] = memo.catalog_schedules
            # A catalog without a schedule has not been seen by its create/resume handler
            # yet; that handler syncs it (and schedules it), so the loop leaves it alone.
            due = [
                catalog
                for catalog in catalogs
                if not catalog["metadata"].get("deletionTimestamp")
                and _key(catalog) in schedules
                and schedules[_key(catalog)].next_due <= now
            ]
            # Catalogs sync side by side; each bounds its own storage requests.
            results = await asyncio.gather(
                *(sync(kopf.Body(catalog), memo, logger) for catalog in due),
                return_exceptions=True,
            )
            for catalog, result in zip(due, results, strict=True):
                if isinstance(result, Exception):
                    # A bug in one sync must not stop the loop for every catalog.
                    logger.error(
                        "Sync of AdapterCatalog %s/%s crashed: %r",
                        catalog["metadata"].get("namespace"),
                        catalog["metadata"]["name"],
                        result,
                    )
                    memo.catalog_schedules[_key(catalog)] = Schedule(
                        next_due=time.monotonic() + BACKOFF_MAX_SECONDS
                    )


@kopf.on.resume(*CATALOGS)
@kopf.on.create(*CATALOGS)
@kopf.on.update(*CATALOGS, field="spec")
async def on_change(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    await sync(body, memo, logger)


@kopf.on.event(*CATALOGS)
async def on_event(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, type: str | None, **_: Any
) -> None:
    """Sync at once when ``lorafleet.dev/sync-requested`` changes.

    Not ``@kopf.on.field``: kopf leaves every annotation under its own storage prefix (ours,
    lorafleet.dev) out of its diffs, so a field handler never sees this one change. The value
    seen first (at creation or start-up) is only recorded: create/resume sync anyway."""
    if type == "DELETED" or "catalog_sync_requests" not in memo:
        return
    key = _key(body)
    value = (body["metadata"].get("annotations") or {}).get(constants.ANNOTATION_SYNC_REQUESTED)
    seen: dict[tuple[str, str], str | None] = memo.catalog_sync_requests
    if key not in seen:
        seen[key] = value
        return
    if value is not None and value != seen[key]:
        seen[key] = value
        logger.info("Sync of AdapterCatalog %s/%s requested (%s)", *key, value)
        await sync(body, memo, logger)
    else:
        seen[key] = value


@kopf.on.delete(*CATALOGS, optional=True)
async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # optional=True: no finalizer. The index ConfigMaps go by ownerReference garbage collection.
    key = _key(body)
    memo.catalog_cache.forget(*key)
    memo.catalog_locks.pop(key, None)
    memo.catalog_schedules.pop(key, None)
    memo.catalog_sync_requests.pop(key, None)
