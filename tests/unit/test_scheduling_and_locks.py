"""The catalog sync schedule (backoff after failures, the interval after a success) and the
per-name locks the runtime keeps only while they are in use."""

from __future__ import annotations

import asyncio

from lorafleet_operator.reconcile.scheduling import CatalogSchedules
from lorafleet_runtime.core.locks import KeyedLocks

KEY = ("ns", "catalog")


def test_a_catalog_nobody_synced_yet_is_left_to_its_create_handler() -> None:
    schedules = CatalogSchedules()
    assert not schedules.known(KEY)
    assert not schedules.is_due(KEY, now=1e9)


def test_failures_back_off_exponentially_up_to_the_cap_and_a_success_resets() -> None:
    schedules = CatalogSchedules(first_backoff_seconds=5, max_backoff_seconds=60)
    delays = [schedules.failed(KEY, now=100.0) for _ in range(6)]
    assert delays == [5, 10, 20, 40, 60, 60]
    assert not schedules.is_due(KEY, now=159.0) and schedules.is_due(KEY, now=160.0)
    schedules.succeeded(KEY, now=200.0, interval=300.0)
    assert schedules.failures(KEY) == 0
    assert not schedules.is_due(KEY, now=499.0) and schedules.is_due(KEY, now=500.0)
    assert schedules.failed(KEY, now=600.0) == 5


def test_an_invalid_spec_waits_for_the_interval_not_the_backoff() -> None:
    schedules = CatalogSchedules()
    assert schedules.failed(KEY, now=0.0, retry_after=3600.0) == 3600.0
    schedules.forget(KEY)
    assert not schedules.known(KEY)


def test_keyed_locks_serialise_one_name_and_disappear_when_unused() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def work(name: str, tag: str) -> None:
        async with locks.hold(name):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    async def main() -> None:
        await asyncio.gather(work("a", "1"), work("a", "2"), work("b", "3"))

    asyncio.run(main())
    # One name at a time for "a"; "b" ran beside it.
    assert order.index("1-") < order.index("2+")
    assert order.index("3+") < order.index("1-")
    assert len(locks) == 0 and not locks.busy("a")
