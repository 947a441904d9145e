"""RayService events (KubeRay writing status, someone deleting it) refresh the owning
LoRAModel: status follows KubeRay, and a deleted RayService is applied again."""

from __future__ import annotations

from typing import Any

import kopf

from lorafleet_api import names
from lorafleet_operator import constants
from lorafleet_operator.handlers.lifecycle import state_of
from lorafleet_operator.reconcile.controllers import model_of_rayservice, reconcile_model_quietly

RAYSERVICES = (constants.RAY_API_GROUP, constants.RAY_API_VERSION, constants.RAYSERVICE_PLURAL)


@kopf.on.event(*RAYSERVICES, labels={names.LABEL_MANAGED_BY: names.FIELD_MANAGER})
async def on_rayservice_event(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    state = state_of(memo)
    if not state.connected:
        return
    model = await model_of_rayservice(state, body)
    if model is not None:
        # Failures are recorded on the LoRAModel; its own handlers retry.
        await reconcile_model_quietly(state, model, logger)
