"""Integration fixtures: lorafleet's own operator as a subprocess (as `lorafleet operator`
runs in its pod), against the session's control plane."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.operators import LorafleetOperator


class OperatorProcess(LorafleetOperator):
    """`lorafleet operator` in a child process, with a kill -9 for crash tests."""

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.popen.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="module")
def lorafleet_operator(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    operator = OperatorProcess(
        control_plane.kubeconfig, tmp_path_factory.mktemp("operator"), debounce_seconds=3
    )
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def get_json(plane: ControlPlane, *args: str) -> dict[str, Any]:
    """``kubectl get ARGS -o json``; {} when it does not exist."""
    result = plane.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def eventually(
    check: Callable[[], Any], *, timeout: float = 60, interval: float = 0.5, what: str = "condition"
) -> Any:
    """Poll until ``check()`` returns something truthy; return it, or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last value: {last!r}")


def condition(obj: dict[str, Any], condition_type: str) -> dict[str, Any]:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == condition_type:
            return dict(cond)
    return {}
