"""LoRAModel handlers: create, update and resume reconcile (the drift loop does too)."""

from __future__ import annotations

from typing import Any

import kopf

from lorafleet_api import names
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.handlers.lifecycle import state_of
from lorafleet_operator.k8s.client import KubeApiError
from lorafleet_operator.reconcile.controllers import model_deleted, reconcile_model

LORAMODELS = (names.API_GROUP, names.API_VERSION, names.LORAMODEL_PLURAL)


@kopf.on.resume(*LORAMODELS)
@kopf.on.create(*LORAMODELS)
@kopf.on.update(*LORAMODELS)
async def on_change(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    try:
        await reconcile_model(state_of(memo), body, logger)
    except InvalidSpecError as err:
        raise kopf.PermanentError(err.message) from err
    except KubeApiError as err:
        raise kopf.TemporaryError(err.message, delay=30) from err


@kopf.on.event(*LORAMODELS)
async def on_event(body: kopf.Body, memo: kopf.Memo, type: str | None, **_: Any) -> None:
    """Not ``@kopf.on.delete(optional=True)``: kopf calls no delete handler for an object
    without its finalizer (https://github.com/nolar/kopf/issues/701), and LoRAModels have none.
    What they own (RayService, runtime ServiceAccount and RBAC) goes by garbage collection."""
    if type == "DELETED":
        await model_deleted(state_of(memo), body)
