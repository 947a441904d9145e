"""Integration fixtures: lorafleet's own operator as a subprocess (as `lorafleet operator`
runs in its pod), against the session's control plane."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lorafleet_testbed import process
from lorafleet_testbed.controlplane import ControlPlane


class OperatorProcess:
    """`lorafleet operator` in a child process; logs in ``log_path``."""

    def __init__(self, plane: ControlPlane, log_dir: Path, *, debounce_seconds: float) -> None:
        self.plane = plane
        self.log_dir = log_dir
        self.debounce_seconds = debounce_seconds
        self.port = process.free_port()
        self.proc: process.ManagedProcess | None = None

    def start(self) -> None:
        env = {
            "KUBECONFIG": str(self.plane.kubeconfig),
            "LORAFLEET_DEBOUNCE_SECONDS": str(self.debounce_seconds),
        }
        self.proc = process.start(
            "lorafleet-operator",
            [
                sys.executable,
                "-m",
                "lorafleet_operator.cli",
                "operator",
                "--log-format=full",
                f"--liveness=http://127.0.0.1:{self.port}/healthz",
            ],
            self.log_dir,
            env=env,
        )
        process.wait_until(
            self.proc,
            lambda: process.http_ok(f"http://127.0.0.1:{self.port}/healthz"),
            timeout=60,
            what="live (/healthz)",
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.popen.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        path = self.log_dir / "lorafleet-operator.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def lorafleet_operator(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    operator = OperatorProcess(
        control_plane, tmp_path_factory.mktemp("operator"), debounce_seconds=3
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
