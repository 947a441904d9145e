"""Operators run as local processes against the local control plane: the real KubeRay
operator (pinned build) and lorafleet's own (``lorafleet operator``).

Without kubelets KubeRay's pods never start, so RayServices never become Ready; what it does
show is whether KubeRay accepts an object (no ValidationFailed) and which RayCluster, Pods and
Services it derives from it."""

from __future__ import annotations

import abc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lorafleet_testbed import process
from lorafleet_testbed.toolchain import tool

if TYPE_CHECKING:
    from lorafleet_testbed.controlplane import ControlPlane


class _LocalOperator(abc.ABC):
    name = ""

    def __init__(self, kubeconfig: Path, log_dir: Path, *, detach: bool = False) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.detach = detach
        self.port = process.free_port()
        self.proc: process.ManagedProcess | None = None

    @abc.abstractmethod
    def _argv(self) -> list[str]:
        """The command line that starts the server."""

    def _env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    @abc.abstractmethod
    def _health_url(self) -> str:
        """A URL that answers 2xx once the server is ready."""

    def command(self) -> list[str]:
        """The command line, for a caller that starts it elsewhere (in a network namespace)."""
        return self._argv()

    def environment(self) -> dict[str, str]:
        return self._env()

    def health_url(self) -> str:
        return self._health_url()

    def start(self) -> None:
        self.proc = process.start(
            self.name, self._argv(), self.log_dir, env=self._env(), detach=self.detach
        )
        process.wait_until(
            self.proc,
            lambda: process.http_ok(self._health_url()),
            timeout=60,
            what=f"healthy ({self._health_url()})",
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class KubeRayOperator(_LocalOperator):
    name = "kuberay-operator"

    def _argv(self) -> list[str]:
        return [
            str(tool("ray-operator")),
            f"--kubeconfig={self.kubeconfig}",
            f"--health-probe-bind-address=127.0.0.1:{self.port}",
            "--metrics-addr=0",
            "--enable-leader-election=false",
            "--log-stdout-encoder=console",
        ]

    def _health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/readyz"


class LorafleetOperator(_LocalOperator):
    """``python -m lorafleet_cli.main operator`` from this interpreter's environment, with its
    Prometheus endpoint at :attr:`metrics_url`."""

    name = "lorafleet-operator"

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        *,
        detach: bool = False,
        debounce_seconds: float | None = None,
        drift_check_seconds: float | None = None,
    ) -> None:
        super().__init__(kubeconfig, log_dir, detach=detach)
        self.debounce_seconds = debounce_seconds
        self.drift_check_seconds = drift_check_seconds
        self.metrics_port = process.free_port()
        while self.metrics_port == self.port:  # both were free, but not from each other
            self.metrics_port = process.free_port()

    def _argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lorafleet_cli.main",
            "operator",
            "--log-format=full",
            f"--liveness=http://127.0.0.1:{self.port}/healthz",
            f"--metrics-address=127.0.0.1:{self.metrics_port}",
        ]

    def _env(self) -> dict[str, str]:
        env = super()._env()
        if self.debounce_seconds is not None:
            env["LORAFLEET_DEBOUNCE_SECONDS"] = str(self.debounce_seconds)
        if self.drift_check_seconds is not None:
            env["LORAFLEET_DRIFT_CHECK_SECONDS"] = str(self.drift_check_seconds)
        return env

    def _health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


class ChartOperator(LorafleetOperator):
    """``lorafleet operator`` on this machine as the Helm chart's Deployment runs it: the
    container's own args (its liveness and metrics addresses moved to free loopback ports) and
    a kubeconfig holding only a token of the Deployment's ServiceAccount, so every API call is
    authorised by the chart's RBAC, never by admin credentials. The Deployment's pod itself
    cannot run here (no kubelet); this process stands in for it."""

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        args: list[str],
        *,
        detach: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(kubeconfig, log_dir, detach=detach)
        self.args = [self._local(arg) for arg in args]
        self.extra_env = dict(env or {})

    def _local(self, arg: str) -> str:
        if arg.startswith("--liveness="):
            return f"--liveness=http://127.0.0.1:{self.port}/healthz"
        if arg.startswith("--metrics-address="):
            return f"--metrics-address=127.0.0.1:{self.metrics_port}"
        return arg

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "lorafleet_cli.main", "operator", *self.args]

    def _env(self) -> dict[str, str]:
        return {**super()._env(), **self.extra_env}

    @classmethod
    def from_deployment(
        cls,
        plane: ControlPlane,
        namespace: str,
        deployment: str,
        log_dir: Path,
        *,
        detach: bool = False,
        env: dict[str, str] | None = None,
        lifetime_hours: int = 720,
    ) -> ChartOperator:
        """Read the Deployment the chart installed and mint a token for its ServiceAccount."""
        log_dir.mkdir(parents=True, exist_ok=True)
        obj = json.loads(
            plane.kubectl("get", "deployment", deployment, "-n", namespace, "-o", "json").stdout
        )
        pod = obj["spec"]["template"]["spec"]
        (container,) = [c for c in pod["containers"] if c["name"] == "operator"]
        if container.get("command") != ["lorafleet", "operator"]:
            raise ValueError(f"unexpected operator command {container.get('command')!r}")
        token = plane.kubectl(
            "create",
            "token",
            pod["serviceAccountName"],
            "-n",
            namespace,
            f"--duration={lifetime_hours}h",
        ).stdout.strip()
        kubeconfig = plane.kubeconfig_for_token(token, log_dir / "operator-token.kubeconfig")
        return cls(kubeconfig, log_dir, list(container.get("args", [])), detach=detach, env=env)
