"""AdapterCatalog handlers: sync on create, resume and spec change, and at once when the
annotation ``<group>/sync-requested`` changes. The catalog loop (reconcile.controllers) syncs
every ``syncInterval`` and retries failures with backoff; kopf's own retries stay out of it."""

from __future__ import annotations

from typing import Any

import kopf

from lorafleet_api import names
from lorafleet_operator.handlers.lifecycle import state_of
from lorafleet_operator.reconcile.controllers import catalog_deleted, sync_catalog, sync_requested
from lorafleet_operator.reconcile.scheduling import object_key

CATALOGS = (names.API_GROUP, names.API_VERSION, names.ADAPTERCATALOG_PLURAL)


@kopf.on.resume(*CATALOGS)
@kopf.on.create(*CATALOGS)
@kopf.on.update(*CATALOGS, field="spec")
async def on_change(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    await sync_catalog(state_of(memo), body, logger)


@kopf.on.event(*CATALOGS)
async def on_event(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, type: str | None, **_: Any
) -> None:
    """Not ``@kopf.on.field``: kopf leaves every annotation under its own storage prefix (ours)
    out of its diffs, so a field handler never sees the sync-requested annotation change.

    Not ``@kopf.on.delete(optional=True)`` either: kopf calls no delete handler for an object
    without its finalizer (https://github.com/nolar/kopf/issues/701), and catalogs have none;
    the DELETED event is where the operator learns that a catalog is gone."""
    state = state_of(memo)
    if type == "DELETED":
        # The index ConfigMaps go by ownerReference garbage collection.
        await catalog_deleted(state, body)
        return
    if not state.connected:
        return
    if sync_requested(state, body):
        logger.info("Sync of AdapterCatalog %s/%s requested", *object_key(body))
        await sync_catalog(state, body, logger)
