"""LoRAModel handlers: create, update, resume and a periodic drift check all reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from typing import Any

import kopf

from lorafleet_operator import constants
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.handlers.lifecycle import forget_lock, object_lock
from lorafleet_operator.k8s.client import KubeApiError
from lorafleet_operator.reconcile.loramodel import reconcile_loramodel
from lorafleet_operator.status.conditions import parse_time
from lorafleet_operator.status.loramodel import NOT_READY_SINCE

LORAMODELS = (constants.API_GROUP, constants.API_VERSION, constants.LORAMODEL_PLURAL)


async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger) -> None:
    """Shared by every trigger; errors become conditions (in the reconciler) and kopf retries.

    Events go through our client, not kopf.info/kopf.warn: the drift loop runs outside any
    kopf handler, where kopf has no event queue and raises LookupError."""
    meta = body["metadata"]
    now = datetime.datetime.now(datetime.UTC)
    async with object_lock(memo, meta["namespace"], meta["name"]):
        try:
            outcome = await reconcile_loramodel(memo.kube, body, memo.config, now=now)
        except InvalidSpecError as err:
            await _event(memo, body, "Warning", err.reason, err.message, now)
            raise kopf.PermanentError(err.message) from err
        except KubeApiError as err:
            await _event(memo, body, "Warning", "ApplyFailed", err.message, now)
            raise kopf.TemporaryError(err.message, delay=30) from err
    if outcome.applied:
        message = f"Applied RayService {outcome.rayservice}"
        await _event(memo, body, "Normal", "Applied", message, now)
        logger.info(message)
    since = parse_time(str(outcome.status.get(NOT_READY_SINCE) or ""))
    if since is not None:
        # Ready is being held while the debounce runs; no event may come when it ends, so
        # look again then (otherwise only the drift check would notice).
        elapsed = (now - since).total_seconds()
        delay = max(0.0, memo.config.debounce_seconds - elapsed) + 0.5
        _schedule_recheck(memo, meta["namespace"], meta["name"], delay, logger)


def _schedule_recheck(
    memo: kopf.Memo, namespace: str, name: str, delay: float, logger: kopf.Logger
) -> None:
    pending: dict[tuple[str, str], asyncio.Task[None]] = memo.rechecks
    key = (namespace, name)
    if key in pending and not pending[key].done():
        return
    pending[key] = asyncio.create_task(_recheck(memo, namespace, name, delay, logger))


async def _recheck(
    memo: kopf.Memo, namespace: str, name: str, delay: float, logger: kopf.Logger
) -> None:
    await asyncio.sleep(delay)
    memo.rechecks.pop((namespace, name), None)
    obj = await memo.kube.get(
        constants.API_GROUP, constants.API_VERSION, constants.LORAMODEL_PLURAL, namespace, name
    )
    if obj is not None:
        with contextlib.suppress(kopf.PermanentError, kopf.TemporaryError):
            await reconcile(kopf.Body(obj), memo, logger)


async def _event(
    memo: kopf.Memo,
    body: kopf.Body,
    kind: str,
    reason: str,
    message: str,
    now: datetime.datetime,
) -> None:
    await memo.kube.post_event(dict(body), event_type=kind, reason=reason, message=message, now=now)


@kopf.on.resume(*LORAMODELS)
@kopf.on.create(*LORAMODELS)
@kopf.on.update(*LORAMODELS)
async def on_change(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    await reconcile(body, memo, logger)


@kopf.on.startup()
async def start_drift_check(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Every ``drift_check_seconds``, reconcile every LoRAModel again: a RayService edited or
    deleted behind our back, or a missed watch event, is repaired within one period.

    One loop for all objects rather than ``@kopf.timer``: kopf puts a finalizer on every
    object that has a timer, and a finalizer would block ``kubectl delete loramodel`` whenever
    the operator is not running (the RayService is garbage-collected without our help)."""
    memo.rechecks = {}
    memo.drift_task = asyncio.create_task(_drift_loop(memo, logger))


@kopf.on.cleanup()
async def stop_drift_check(memo: kopf.Memo, **_: Any) -> None:
    tasks: list[asyncio.Task[None] | None] = [
        memo.get("drift_task"),
        *memo.get("rechecks", {}).values(),
    ]
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _drift_loop(memo: kopf.Memo, logger: kopf.Logger) -> None:
    while True:
        await asyncio.sleep(memo.config.drift_check_seconds)
        namespaces = memo.get("namespaces") or [None]
        for namespace in namespaces:
            try:
                items = await memo.kube.list(
                    constants.API_GROUP,
                    constants.API_VERSION,
                    constants.LORAMODEL_PLURAL,
                    namespace,
                )
            except KubeApiError as err:
                logger.warning("Listing LoRAModels for the drift check failed: %s", err)
                continue
            for item in items:
                try:
                    await reconcile(kopf.Body(item), memo, logger)
                except (kopf.PermanentError, kopf.TemporaryError):
                    pass  # already in the LoRAModel's status and Events
                except Exception:  # one bad object must not stop the loop
                    meta = item["metadata"]
                    logger.exception(
                        "Drift check of LoRAModel %s/%s failed", meta["namespace"], meta["name"]
                    )


@kopf.on.delete(*LORAMODELS, optional=True)
async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # optional=True: no finalizer. The RayService goes by ownerReference garbage collection.
    forget_lock(memo, body["metadata"]["namespace"], body["metadata"]["name"])
