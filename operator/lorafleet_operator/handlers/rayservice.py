"""RayService events (KubeRay writing status, someone deleting it) refresh the owning
LoRAModel: status follows KubeRay, and a deleted RayService is applied again."""

from __future__ import annotations

from typing import Any

import kopf

from lorafleet_operator import constants
from lorafleet_operator.handlers.loramodel import reconcile

RAYSERVICES = (constants.RAY_API_GROUP, constants.RAY_API_VERSION, constants.RAYSERVICE_PLURAL)


@kopf.on.event(*RAYSERVICES, labels={constants.LABEL_MANAGED_BY: constants.FIELD_MANAGER})
async def on_rayservice_event(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    owner = (body["metadata"].get("labels") or {}).get(constants.LABEL_LORAMODEL)
    namespace = body["metadata"]["namespace"]
    if not owner or "kube" not in memo:
        return
    loramodel = await memo.kube.get(
        constants.API_GROUP, constants.API_VERSION, constants.LORAMODEL_PLURAL, namespace, owner
    )
    if loramodel is None or loramodel["metadata"].get("deletionTimestamp"):
        return  # being garbage-collected with its owner
    try:
        await reconcile(kopf.Body(loramodel), memo, logger)
    except (kopf.PermanentError, kopf.TemporaryError) as err:
        # Already recorded on the LoRAModel; its own handlers retry.
        logger.debug("Skipped status refresh for %s/%s: %s", namespace, owner, err)
