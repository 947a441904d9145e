"""The real KubeRay operator, run as a local process against the local control plane.

Without kubelets its pods never start, so RayServices never become Ready; what it does show is
whether KubeRay accepts an object (no ValidationFailed) and which RayCluster, Pods and Services
it derives from it."""

from __future__ import annotations

from pathlib import Path

from lorafleet_testbed import process
from lorafleet_testbed.toolchain import tool


class KubeRayOperator:
    def __init__(self, kubeconfig: Path, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.probe_port = process.free_port()
        self.proc: process.ManagedProcess | None = None

    def start(self) -> None:
        self.proc = process.start(
            "kuberay-operator",
            [
                str(tool("ray-operator")),
                f"--kubeconfig={self.kubeconfig}",
                f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
                "--metrics-addr=0",
                "--enable-leader-election=false",
                "--log-stdout-encoder=console",
            ],
            self.log_dir,
        )
        probe = f"http://127.0.0.1:{self.probe_port}/readyz"
        process.wait_until(
            self.proc, lambda: process.http_ok(probe), timeout=60, what="ready (/readyz)"
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def log_text(self) -> str:
        return self.proc.log_path.read_text(errors="replace") if self.proc else ""
