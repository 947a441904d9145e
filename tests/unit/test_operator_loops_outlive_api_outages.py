"""The operator's own loops (drift check, catalog syncs) run outside kopf: an exception ends
them for good, silently. While the API server restarts, requests fail with connection errors,
not API errors; the loops must log them and try again at the next pass.

(Against a real API server restart: tests/integration/test_faults_control_plane.py.)"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import aiohttp
import pytest

from lorafleet_operator.k8s.client import KubeClient
from lorafleet_operator.model.config import OperatorConfig
from lorafleet_operator.reconcile.controllers import catalog_loop, drift_loop
from lorafleet_operator.reconcile.scheduling import list_watched
from lorafleet_operator.reconcile.state import OperatorState

LOG = logging.getLogger("test")


class RestartingApiServer:
    """Stands in for our KubeClient: ``list`` fails as aiohttp does while nothing listens on
    the API server's port, ``down`` times, then answers with no objects."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.calls = 0

    async def list(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls <= self.down:
            raise aiohttp.ServerDisconnectedError()
        return []


def test_a_listing_during_an_outage_is_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube = RestartingApiServer(down=1)
    found = asyncio.run(list_watched(cast(KubeClient, kube), "g", "v1", "things", ("a", "b"), LOG))
    assert found == [] and kube.calls == 2
    assert "Listing things failed" in caplog.text


@pytest.mark.parametrize("loop", [drift_loop, catalog_loop])
def test_the_loops_keep_running_through_an_outage(loop: Any) -> None:
    async def scenario() -> tuple[int, bool]:
        state = OperatorState(
            config=OperatorConfig(drift_check_seconds=1, catalog_tick_seconds=0.05)
        )
        kube = RestartingApiServer(down=2)
        state._kube = cast(KubeClient, kube)
        task = asyncio.create_task(loop(state, LOG))
        await asyncio.sleep(3.5)
        alive = not task.done()
        task.cancel()
        return kube.calls, alive

    calls, alive = asyncio.run(scenario())
    assert alive, "the loop ended during the outage"
    assert calls >= 3, "the loop stopped listing after the outage"
