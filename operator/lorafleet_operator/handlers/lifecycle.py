"""Operator start-up and shutdown: kopf settings and the shared Kubernetes client."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf

from lorafleet_operator import constants
from lorafleet_operator.k8s.client import KubeClient
from lorafleet_operator.model.config import OperatorConfig


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's own bookkeeping lives under our API group, not kopf.zalando.org.
    settings.persistence.finalizer = f"{constants.API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=constants.API_GROUP
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=constants.API_GROUP, key="last-handled-configuration"
    )
    settings.posting.level = 20  # logging.INFO: Normal and Warning events, no debug noise
    # Re-list now and then so a missed watch event cannot leave an object unreconciled.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # No worker limit (kopf's default): a limited worker idles 5 s after its object before it
    # frees its slot, which capped throughput at ~limit objects per 5 s in bench/reconcile.py.
    memo.kube = await KubeClient.connect(os.environ.get("KUBECONFIG") or None)
    memo.config = memo.get("config") or OperatorConfig()
    memo.locks = {}


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    kube = memo.get("kube")
    if kube is not None:
        await kube.close()


def object_lock(memo: kopf.Memo, namespace: str, name: str) -> asyncio.Lock:
    """One lock per LoRAModel: its own handlers and RayService events never interleave."""
    locks: dict[tuple[str, str], asyncio.Lock] = memo.locks
    return locks.setdefault((namespace, name), asyncio.Lock())


def forget_lock(memo: kopf.Memo, namespace: str, name: str) -> None:
    memo.locks.pop((namespace, name), None)
