"""What the operator keeps between events, in one typed object: the Kubernetes client, its
configuration, per-object locks, the catalogs' sync schedules and index cache, the metrics,
and the background tasks. kopf carries it as ``memo.state`` (the handlers' only memo
attribute)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from lorafleet_operator.k8s.client import KubeClient
from lorafleet_operator.metrics import OperatorMetrics
from lorafleet_operator.model.config import OperatorConfig
from lorafleet_operator.reconcile.adaptercatalog import IndexCache
from lorafleet_operator.reconcile.scheduling import CatalogSchedules, ObjectKey, ObjectLocks


@dataclass
class OperatorState:
    config: OperatorConfig
    # Watched namespaces; empty means every namespace.
    namespaces: tuple[str, ...] = ()
    _kube: KubeClient | None = None
    # The runner serves its registry when --metrics-address is set.
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    model_locks: ObjectLocks = field(default_factory=ObjectLocks)
    catalog_locks: ObjectLocks = field(default_factory=ObjectLocks)
    catalog_schedules: CatalogSchedules = field(default_factory=CatalogSchedules)
    index_cache: IndexCache = field(default_factory=IndexCache)
    # The last value of each catalog's sync-requested annotation that was seen.
    sync_requests: dict[ObjectKey, str | None] = field(default_factory=dict)
    # LoRAModels to look at again when their Ready debounce ends.
    rechecks: dict[ObjectKey, asyncio.Task[None]] = field(default_factory=dict)
    # Per LoRAModel, the spec warnings posted as Events and the generation they were for.
    posted_warnings: dict[ObjectKey, tuple[int, frozenset[str]]] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            raise RuntimeError("the operator has not connected to the API server yet")
        return self._kube

    @property
    def connected(self) -> bool:
        return self._kube is not None

    async def connect(self) -> None:
        self._kube = await KubeClient.connect(self.config.kubeconfig)

    def start(self, loop: Coroutine[Any, Any, None]) -> None:
        """Run a background loop until :meth:`close`."""
        self._tasks.append(asyncio.create_task(loop))

    async def close(self) -> None:
        tasks = [*self._tasks, *self.rechecks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.rechecks.clear()
        if self._kube is not None:
            await self._kube.close()
            self._kube = None

    def forget_catalog(self, key: ObjectKey) -> None:
        self.index_cache.forget(*key)
        self.catalog_locks.forget(key)
        self.catalog_schedules.forget(key)
        self.sync_requests.pop(key, None)
        # Per-catalog series are bounded by the catalogs that exist.
        self.metrics.forget_catalog(*key)

    def forget_model(self, key: ObjectKey) -> None:
        self.model_locks.forget(key)
        self.posted_warnings.pop(key, None)
