"""e2e fixtures: one KubeRay cluster per module (control plane, kube-scheduler, KWOK, KubeRay,
Ray pods run locally in network namespaces). The machine has 2 cores: one RayService at a
time. The host reaches the cluster only through the cluster's forwarder on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lorafleet_testbed.controlplane import KUBERAY_CRD_DIR
from lorafleet_testbed.kuberay_cluster import KUBELET, KubeRayCluster
from lorafleet_testbed.toolchain import ToolMissingError, tool

SERVE_APPS = Path(__file__).parent / "serve_apps"
T = TypeVar("T")


def require_namespaces() -> None:
    """Skip (saying why) where network namespaces cannot be made or a tool is missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root: it makes network namespaces")
    if not all(shutil.which(t) for t in ("ip", "nsenter", "unshare", "setpriv")):
        pytest.skip("needs ip (iproute2) and nsenter, unshare, setpriv (util-linux)")
    try:
        for name in ("kwok", "kube-scheduler", "ray-operator", "kube-apiserver"):
            tool(name)
    except ToolMissingError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeRayCluster]:
    require_namespaces()
    with KubeRayCluster.start(
        crd_dirs=(KUBERAY_CRD_DIR,), pod_env={"PYTHONPATH": str(SERVE_APPS)}
    ) as started:
        yield started


def host_kubectl(cluster: KubeRayCluster, *args: str, check: bool = True) -> str:
    """kubectl run in the host namespace, as a user would: it reaches the API server through
    the forwarder on 127.0.0.1."""
    result = subprocess.run(
        [str(tool("kubectl")), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def get_json(cluster: KubeRayCluster, *args: str) -> dict[str, Any]:
    """``kubectl get ARGS -o json``; {} when it does not exist."""
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    context: Callable[[], str] = lambda: "",
) -> T:
    """Poll until ``check()`` returns something truthy; fail saying ``what`` and, for
    diagnosis, ``context()`` (evaluated only then)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}\n{context()}")


def log_tail(cluster: KubeRayCluster, name: str = KUBELET, lines: int = 40) -> str:
    path = cluster.logs / f"{name}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return f"--- {path} (tail)\n" + "\n".join(text.splitlines()[-lines:])
