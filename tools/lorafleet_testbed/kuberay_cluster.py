"""The real KubeRay Serve hop on one machine: a Kubernetes cluster whose Ray pods run.

Everything lives in a private network namespace (the "cluster" namespace: the node IP on its
loopback, no route off the machine): the control plane (with the endpoint controllers),
kube-scheduler, KWOK playing one Node's kubelet, the pinned KubeRay operator (with
``--use-kubernetes-proxy``: there is no cluster DNS for it to find head Services by), and the
Ray pod kubelet (:mod:`lorafleet_testbed.raypods`), which gives each Ray pod a namespace of its
own holding its IP. RayServices reach Ready through the real KubeRay: it deploys the Serve
config to the head, labels serve pods, and the serve Service gets endpoints.

From the host, everything is reached through forwarders on 127.0.0.1 only
(:mod:`lorafleet_testbed.forward`): the API server at the same port as inside, so
:attr:`KubeRayCluster.kubeconfig` works both on the host and in the namespace. Other servers
the pods must reach (MinIO, the lorafleet operator) are started inside with
:meth:`KubeRayCluster.start_process` and listen on :attr:`KubeRayCluster.node_ip`.

Example::

    with KubeRayCluster.start(pod_env={"PYTHONPATH": "/path/to/app"}) as cluster:
        cluster.kubectl("apply", "-f", "rayservice.yaml")
        port = cluster.forward("10.244.0.2", 8000)   # a Serve proxy, from the host

``start(detach=True)`` leaves every process running after the caller exits (``make demo``);
save :meth:`KubeRayCluster.state` and end it later with :func:`stop_detached`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar

from lorafleet_testbed import controlplane, kwok, netns, process
from lorafleet_testbed.controlplane import (
    ENDPOINT_CONTROLLERS,
    KUBERAY_CRD_DIR,
    LORAFLEET_CRD_DIR,
    ControlPlane,
    ControlPlaneState,
)
from lorafleet_testbed.forward import Route
from lorafleet_testbed.forward import start_process as start_forwarder
from lorafleet_testbed.kubeapi import Credentials
from lorafleet_testbed.operators import KubeRayOperator
from lorafleet_testbed.raypods import KubeletConfig

NODE_IP: Final = "10.245.0.1"
POD_CIDR: Final = "10.244.0.0/24"
KUBELET: Final = "ray-pod-kubelet"

T = TypeVar("T")


class ProxiedKubeRayOperator(KubeRayOperator):
    """KubeRay reaching each Ray head's dashboard through the API server's service proxy."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--use-kubernetes-proxy"]


@dataclass
class KubeRayClusterState:
    """What :func:`stop_detached` (``make demo-down``) needs to find a detached cluster."""

    data_dir: str
    owns_data_dir: bool
    netns: str
    node_ip: str
    kubeconfig: str
    server: str
    ray_temp_dir: str
    control_plane: ControlPlaneState
    # Every process but the control plane's, in start order (stopped in reverse).
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> KubeRayClusterState:
        """The inverse of ``dataclasses.asdict``."""
        values = dict(raw)
        values["control_plane"] = ControlPlaneState(**values["control_plane"])
        return cls(**values)


class KubeRayCluster:
    """Start with :meth:`start`; stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(
        self,
        data_dir: Path,
        namespace: netns.NetworkNamespace,
        *,
        owns_data_dir: bool,
        detach: bool,
        node_ip: str,
        ray_temp_dir: Path,
    ) -> None:
        self.data_dir = data_dir
        self.netns = namespace
        self.owns_data_dir = owns_data_dir
        self.detach = detach
        self.node_ip = node_ip
        self.ray_temp_dir = ray_temp_dir
        self.plane: ControlPlane | None = None
        self.processes: list[process.ManagedProcess] = []
        self.pids: dict[str, int] = {}
        self.logs = data_dir / "logs"
        # Set for a handle made by attach(): the control plane's processes are recorded there.
        self._attached_plane: ControlPlaneState | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(
        cls,
        data_dir: Path | None = None,
        *,
        detach: bool = False,
        crd_dirs: Sequence[Path] = (KUBERAY_CRD_DIR, LORAFLEET_CRD_DIR),
        pod_env: Mapping[str, str] | None = None,
        node_capacity: Mapping[str, str] = kwok.DEFAULT_CAPACITY,
        ray_executable: str | None = None,
    ) -> KubeRayCluster:
        """Start everything; ``pod_env`` is added to every Ray pod's environment (e.g.
        ``PYTHONPATH`` for code a container image would hold). ``ray_executable``: the ``ray``
        that runs the pods (default: the one beside this interpreter)."""
        netns.reap_stale()
        owns = data_dir is None
        directory = Path(tempfile.mkdtemp(prefix="lorafleet-kr-")) if data_dir is None else data_dir
        directory.mkdir(parents=True, exist_ok=True)
        # Ray's unix sockets live under its temp dir and must fit in 107 bytes: keep it short.
        ray_temp = Path(tempfile.mkdtemp(prefix="lfr-", dir="/tmp"))
        namespace = netns.create(netns.cluster_name(detached=detach))
        cluster = cls(
            directory,
            namespace,
            owns_data_dir=owns,
            detach=detach,
            node_ip=NODE_IP,
            ray_temp_dir=ray_temp,
        )
        if not detach:
            atexit.register(cluster.stop)
        try:
            cluster._start(
                crd_dirs,
                dict(pod_env or {}),
                node_capacity,
                ray_executable or str(Path(sys.executable).with_name("ray")),
            )
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(
        self,
        crd_dirs: Sequence[Path],
        pod_env: dict[str, str],
        node_capacity: Mapping[str, str],
        ray_executable: str,
    ) -> None:
        netns.setup_cluster(self.netns, self.node_ip)
        self.plane = plane = ControlPlane.start(
            self.data_dir / "control-plane",
            detach=self.detach,
            crd_dirs=crd_dirs,
            extra_controllers=ENDPOINT_CONTROLLERS,
            netns=self.netns,
            bind_address="0.0.0.0",
        )
        api_port = urllib.parse.urlsplit(plane.server).port
        assert api_port is not None
        self._forward("forward-apiserver", Route(api_port, "127.0.0.1", api_port))

        self.start_process("kube-scheduler", kwok.scheduler_argv(plane.kubeconfig))
        self.start_process(
            "kwok",
            kwok.kwok_argv(plane.kubeconfig, kwok.NODE_NAME, POD_CIDR, self.node_ip),
        )
        kuberay = ProxiedKubeRayOperator(plane.kubeconfig, self.logs)
        self.start_process(
            kuberay.name,
            kuberay.command(),
            env=kuberay.environment(),
            health_url=kuberay.health_url(),
        )
        kwok.add_node(plane, kwok.NODE_NAME, node_capacity)

        assert plane.pki is not None
        config = KubeletConfig(
            cluster_netns=self.netns.name,
            node_name=kwok.NODE_NAME,
            node_ip=self.node_ip,
            api=Credentials(
                server=plane.server,
                ca_cert=plane.pki.ca_cert,
                client_cert=plane.pki.admin.cert,
                client_key=plane.pki.admin.key,
            ),
            pod_api_server=f"https://{self.node_ip}:{api_port}",
            data_dir=self.data_dir / "pods",
            ray_temp_dir=self.ray_temp_dir,
            ray_executable=ray_executable,
            pod_env=pod_env,
        )
        config_path = self.data_dir / "ray-pod-kubelet.json"
        config.save(config_path)
        self.start_process(
            KUBELET,
            [sys.executable, "-m", "lorafleet_testbed.raypods", f"--config={config_path}"],
        )

    @classmethod
    def attach(cls, state: KubeRayClusterState) -> KubeRayCluster:
        """A handle on a detached cluster another process started (``make demo`` run again):
        kubectl, :meth:`start_process` (detached, recorded in :meth:`state`), :meth:`forward`;
        :meth:`stop` stops it all, as :func:`stop_detached` does."""
        cluster = cls(
            Path(state.data_dir),
            netns.NetworkNamespace(state.netns),
            owns_data_dir=state.owns_data_dir,
            detach=True,
            node_ip=state.node_ip,
            ray_temp_dir=Path(state.ray_temp_dir),
        )
        cluster.plane = ControlPlane.attach(state.control_plane, netns=cluster.netns)
        cluster.pids = dict(state.pids)
        cluster._attached_plane = state.control_plane
        return cluster

    def stop(self) -> None:
        """Stop every process (the pods' first), remove every namespace and owned data."""
        atexit.unregister(self.stop)
        if self._attached_plane is not None:
            stop_detached(self.state())
            return
        for proc in reversed(self.processes):
            # The kubelet stops its pods on SIGTERM; give it time to do so.
            proc.stop(timeout=20 if proc.name == KUBELET else 10)
        self.processes.clear()
        if self.plane is not None:
            self.plane.stop()
        netns.remove_cluster(self.netns.name)
        shutil.rmtree(self.ray_temp_dir, ignore_errors=True)
        if self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> KubeRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def state(self) -> KubeRayClusterState:
        assert self.plane is not None
        return KubeRayClusterState(
            data_dir=str(self.data_dir),
            owns_data_dir=self.owns_data_dir,
            netns=self.netns.name,
            node_ip=self.node_ip,
            kubeconfig=str(self.kubeconfig),
            server=self.plane.server,
            ray_temp_dir=str(self.ray_temp_dir),
            control_plane=self._control_plane_state(),
            pids=dict(self.pids),
        )

    def _control_plane_state(self) -> ControlPlaneState:
        if self._attached_plane is not None:
            return self._attached_plane
        assert self.plane is not None
        return self.plane.state()

    # ------------------------------------------------------------------ using it
    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig: valid on the host (through the forwarder) and inside."""
        assert self.plane is not None
        return self.plane.kubeconfig

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert self.plane is not None
        return self.plane.kubectl(*args, check=check, input_text=input_text)

    def inside(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread inside the cluster namespace (e.g. a health check of a
        server listening on :attr:`node_ip`)."""
        return self.netns.call(fn)

    def start_process(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        health_url: str | None = None,
        timeout: float = 60,
    ) -> process.ManagedProcess:
        """Start a long-running process inside the cluster namespace (detached when the
        cluster is), log in ``logs/<name>.log``; with ``health_url``, wait until it answers
        2xx from inside. :meth:`stop` stops it."""
        proc = process.start(name, self.netns.argv(argv), self.logs, env=env, detach=self.detach)
        self._record(proc)
        if health_url is not None:
            process.wait_until(
                proc,
                lambda: self.inside(lambda: process.http_ok(health_url)),
                timeout=timeout,
                what=f"healthy ({health_url})",
            )
        return proc

    def forward(self, target_host: str, target_port: int, *, listen_port: int | None = None) -> int:
        """Make ``target_host:target_port`` (as seen in the cluster namespace: the node IP, a
        pod IP) reachable from the host at 127.0.0.1 on the returned port."""
        port = listen_port or process.free_port()
        self._forward(f"forward-{port}", Route(port, target_host, target_port))
        return port

    def _forward(self, name: str, route: Route) -> None:
        self._record(start_forwarder(name, self.netns, [route], self.logs, detach=self.detach))

    def _record(self, proc: process.ManagedProcess) -> None:
        self.processes.append(proc)
        self.pids[proc.name] = proc.pid


def save_state(state: KubeRayClusterState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(state), indent=2))


def load_state(path: Path) -> KubeRayClusterState | None:
    if not path.exists():
        return None
    return KubeRayClusterState.from_dict(json.loads(path.read_text()))


def running(state: KubeRayClusterState) -> bool:
    """Every recorded process is alive and the namespace exists."""
    pids = [*state.pids.values(), *state.control_plane.pids.values()]
    return netns.NetworkNamespace(state.netns).exists() and all(map(process.pid_alive, pids))


def _ours(pid: int, state: KubeRayClusterState) -> bool:
    """Whether ``pid`` is still one of the cluster's processes: one inside its namespace, or a
    forwarder into it. A recorded pid may since have been reused by an unrelated process."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        namespace = Path(f"/proc/{pid}/ns/net").stat().st_ino
    except OSError:
        return False
    if state.netns.encode() in command:
        return True
    with contextlib.suppress(OSError):
        return namespace == (netns.NETNS_DIR / state.netns).stat().st_ino
    return False


def stop_detached(state: KubeRayClusterState) -> None:
    """Stop a cluster started with ``detach=True`` by another process, and remove its
    namespaces and data."""
    for name, pid in reversed(state.pids.items()):
        if _ours(pid, state):
            process.stop_pid(pid, timeout=20 if name == KUBELET else 10)
    plane = state.control_plane
    controlplane.stop_detached(
        replace(plane, pids={name: pid for name, pid in plane.pids.items() if _ours(pid, state)})
    )
    netns.remove_cluster(state.netns)
    shutil.rmtree(state.ray_temp_dir, ignore_errors=True)
    if state.owns_data_dir:
        shutil.rmtree(state.data_dir, ignore_errors=True)
