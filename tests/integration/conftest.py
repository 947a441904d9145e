"""Integration fixtures: lorafleet's own operator as a subprocess (as `lorafleet operator`
runs in its pod), against the session's control plane."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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


class KillOnEvent:
    """Watches a collection through the API (a raw watch, no polling delay) and SIGKILLs
    ``pid`` on the first event ``predicate`` accepts: the kill lands within milliseconds of
    the write that triggered it, before the writer's next request."""

    def __init__(
        self, plane: ControlPlane, path: str, pid: int, predicate: Callable[[dict[str, Any]], bool]
    ) -> None:
        assert plane.pki is not None
        self.plane = plane
        self.path = path
        self.pid = pid
        self.predicate = predicate
        self.event: dict[str, Any] | None = None
        self.ready = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(15), "the watch did not start"

    def _watch(self) -> None:
        assert self.plane.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.plane.pki.ca_cert))
        ctx.load_cert_chain(str(self.plane.pki.admin.cert), str(self.plane.pki.admin.key))
        host, port = self.plane.server.removeprefix("https://").rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=120)
        listed = json.loads(self._get(conn, self.path))
        version = listed["metadata"]["resourceVersion"]
        sep = "&" if "?" in self.path else "?"
        conn.request("GET", f"{self.path}{sep}watch=true&resourceVersion={version}")
        response = conn.getresponse()
        self.ready.set()
        try:
            for line in response:
                event = json.loads(line)
                if self.predicate(event):
                    os.kill(self.pid, signal.SIGKILL)
                    self.event = event
                    return
        finally:
            self.done.set()
            conn.close()

    @staticmethod
    def _get(conn: http.client.HTTPSConnection, path: str) -> bytes:
        conn.request("GET", path)
        return conn.getresponse().read()


def apply_in(plane: ControlPlane, obj: dict[str, Any] | Path, namespace: str) -> None:
    """``kubectl apply`` of a file or an object into ``namespace``."""
    if isinstance(obj, Path):
        plane.kubectl("apply", "-n", namespace, "-f", str(obj))
    else:
        plane.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(obj))


def rayservice_for(plane: ControlPlane, namespace: str, model: str) -> dict[str, Any]:
    """The one RayService the operator made for LoRAModel ``model``; {} when there is none."""
    items = get_json(
        plane, "rayservices", "-n", namespace, "-l", f"lorafleet.dev/loramodel={model}"
    ).get("items", [])
    return items[0] if len(items) == 1 else {}


def tamper_rayservice(plane: ControlPlane, namespace: str, name: str) -> None:
    """Strip the labels the operator watches RayServices by (so no event reaches it) and
    overwrite the spec-hash annotation: only the drift check can notice and repair this."""
    plane.kubectl(
        "label",
        "rayservice",
        name,
        "-n",
        namespace,
        "app.kubernetes.io/managed-by-",
        "lorafleet.dev/loramodel-",
    )
    plane.kubectl(
        "annotate",
        "--overwrite",
        "rayservice",
        name,
        "-n",
        namespace,
        "lorafleet.dev/spec-hash=tampered",
    )
