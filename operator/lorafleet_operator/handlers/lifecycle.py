"""Operator start-up and shutdown: kopf settings, the API connection and the loops."""

from __future__ import annotations

from typing import Any, cast

import kopf

from lorafleet_api import names
from lorafleet_operator.reconcile.controllers import catalog_loop, drift_loop
from lorafleet_operator.reconcile.state import OperatorState


def state_of(memo: kopf.Memo) -> OperatorState:
    """The operator's state, which the runner puts into kopf's memo."""
    return cast(OperatorState, memo.state)


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    # kopf's own bookkeeping lives under our API group, not kopf.zalando.org.
    settings.persistence.finalizer = f"{names.API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.API_GROUP, key="last-handled-configuration"
    )
    # No cluster scanning: kopf would list and watch Namespaces and CRDs cluster-wide to follow
    # added namespaces and CRDs, which the chart's least-privilege RBAC does not grant (and
    # namespaced mode must not need). The kinds present at start-up are served; KubeRay's CRD
    # must exist before the operator starts (the chart checks it at install).
    settings.scanning.disabled = True
    settings.posting.level = 20  # logging.INFO: Normal and Warning events, no debug noise
    # Re-list now and then so a missed watch event cannot leave an object unreconciled.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # No worker limit (kopf's default): a limited worker idles 5 s after its object before it
    # frees its slot, which capped throughput at ~limit objects per 5 s in bench/reconcile.py.
    state = state_of(memo)
    await state.connect()
    state.start(catalog_loop(state, logger))
    state.start(drift_loop(state, logger))


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await state_of(memo).close()
