"""When each AdapterCatalog syncs next, per-object locks, and listing every object of a kind
in the namespaces the operator watches. No kopf, no clock of its own (``now`` is passed in),
so the backoff is unit-tested."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from lorafleet_operator.k8s.client import TRANSPORT_ERRORS, JsonObj, KubeApiError, KubeClient

ObjectKey = tuple[str, str]  # (namespace, name)
Logger = logging.Logger | logging.LoggerAdapter[Any]

BACKOFF_FIRST_SECONDS: Final = 5.0
BACKOFF_MAX_SECONDS: Final = 300.0


def object_key(obj: Any) -> ObjectKey:
    """(namespace, name) of an object as the API returns it (namespace ``default`` if none)."""
    metadata = obj["metadata"]
    return metadata.get("namespace") or "default", metadata["name"]


@dataclass
class Schedule:
    next_due: float  # on the caller's monotonic clock
    failures: int = 0


@dataclass
class CatalogSchedules:
    """When each catalog is due. A catalog without a schedule has not been synced by its
    create/resume handler yet; the periodic loop leaves it to that handler."""

    first_backoff_seconds: float = BACKOFF_FIRST_SECONDS
    max_backoff_seconds: float = BACKOFF_MAX_SECONDS
    _schedules: dict[ObjectKey, Schedule] = field(default_factory=dict)

    def is_due(self, key: ObjectKey, now: float) -> bool:
        schedule = self._schedules.get(key)
        return schedule is not None and schedule.next_due <= now

    def known(self, key: ObjectKey) -> bool:
        return key in self._schedules

    def succeeded(self, key: ObjectKey, now: float, interval: float) -> None:
        self._schedules[key] = Schedule(next_due=now + interval)

    def failed(self, key: ObjectKey, now: float, *, retry_after: float | None = None) -> float:
        """Record a failed sync; the delay until the next try (exponential backoff, or
        ``retry_after`` when only an edit can help). Returns the delay."""
        schedule = self._schedules.setdefault(key, Schedule(next_due=now))
        schedule.failures += 1
        delay: float = min(
            self.max_backoff_seconds,
            self.first_backoff_seconds * 2.0 ** (schedule.failures - 1),
        )
        if retry_after is not None:
            delay = retry_after
        schedule.next_due = now + delay
        return delay

    def failures(self, key: ObjectKey) -> int:
        schedule = self._schedules.get(key)
        return schedule.failures if schedule else 0

    def forget(self, key: ObjectKey) -> None:
        self._schedules.pop(key, None)


@dataclass
class ObjectLocks:
    """One lock per object: its handlers, loops and related events never interleave."""

    _locks: dict[ObjectKey, asyncio.Lock] = field(default_factory=dict)

    def lock(self, key: ObjectKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def forget(self, key: ObjectKey) -> None:
        self._locks.pop(key, None)


async def list_watched(
    kube: KubeClient,
    group: str,
    version: str,
    plural: str,
    namespaces: Sequence[str],
    logger: Logger,
) -> list[JsonObj]:
    """Every object of a kind in the watched namespaces (all when none are named). A
    namespace whose listing fails (an API error, or no API server to answer: it restarts)
    is logged and skipped: the next pass tries again."""
    items: list[JsonObj] = []
    scopes: list[str | None] = [*namespaces] if namespaces else [None]
    for namespace in scopes:
        try:
            items.extend(await kube.list(group, version, plural, namespace))
        except (KubeApiError, *TRANSPORT_ERRORS) as err:
            logger.warning("Listing %s failed: %s", plural, err)
    return items
