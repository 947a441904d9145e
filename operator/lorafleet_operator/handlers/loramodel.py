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

LORAMODELS = (constants.API_GROUP, constants.API_VERSION, constants.LORAMODEL_PLURAL)
DRIFT_CHECK_SECONDS = 60.0


async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger) -> None:
    """Shared by every trigger; errors become conditions (in the reconciler) and kopf retries."""
    meta = body["metadata"]
    async with object_lock(memo, meta["namespace"], meta["name"]):
        try:
            outcome = await reconcile_loramodel(
                memo.kube, body, memo.config, now=datetime.datetime.now(datetime.UTC)
            )
        except InvalidSpecError as err:
            kopf.warn(body, reason=err.reason, message=err.message)
            raise kopf.PermanentError(err.message) from err
        except KubeApiError as err:
            kopf.warn(body, reason="ApplyFailed", message=err.message)
            raise kopf.TemporaryError(err.message, delay=30) from err
    if outcome.applied:
        kopf.info(body, reason="Applied", message=f"Applied RayService {outcome.rayservice}")
        logger.info("Applied RayService %s", outcome.rayservice)


@kopf.on.resume(*LORAMODELS)
@kopf.on.create(*LORAMODELS)
@kopf.on.update(*LORAMODELS)
async def on_change(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    await reconcile(body, memo, logger)


@kopf.on.startup()
async def start_drift_check(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Every DRIFT_CHECK_SECONDS, reconcile every LoRAModel again: a RayService edited or
    deleted behind our back, or a missed watch event, is repaired within one period.

    One loop for all objects rather than ``@kopf.timer``: kopf puts a finalizer on every
    object that has a timer, and a finalizer would block ``kubectl delete loramodel`` whenever
    the operator is not running (the RayService is garbage-collected without our help)."""
    memo.drift_task = asyncio.create_task(_drift_loop(memo, logger))


@kopf.on.cleanup()
async def stop_drift_check(memo: kopf.Memo, **_: Any) -> None:
    task: asyncio.Task[None] | None = memo.get("drift_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _drift_loop(memo: kopf.Memo, logger: kopf.Logger) -> None:
    while True:
        await asyncio.sleep(DRIFT_CHECK_SECONDS)
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
                with contextlib.suppress(kopf.PermanentError, kopf.TemporaryError):
                    await reconcile(kopf.Body(item), memo, logger)


@kopf.on.delete(*LORAMODELS, optional=True)
async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # optional=True: no finalizer. The RayService goes by ownerReference garbage collection.
    forget_lock(memo, body["metadata"]["namespace"], body["metadata"]["name"])
