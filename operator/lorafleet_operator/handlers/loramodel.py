"""LoRAModel handlers: create, update and resume reconcile (the drift loop does too)."""

from __future__ import annotations

from typing import Any

import kopf

from lorafleet_api import names
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.handlers.lifecycle import state_of
from lorafleet_operator.k8s.client import KubeApiError
from lorafleet_operator.reconcile.controllers import reconcile_model
from lorafleet_operator.reconcile.scheduling import object_key

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


@kopf.on.delete(*LORAMODELS, optional=True)
async def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # optional=True: no finalizer. The RayService goes by ownerReference garbage collection.
    state_of(memo).forget_model(object_key(body))
