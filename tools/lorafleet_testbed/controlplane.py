"""A real Kubernetes control plane on loopback: etcd, kube-apiserver (TLS, client
certificates, RBAC, service-account tokens) and kube-controller-manager (garbage collection,
namespaces, service accounts). No kubelet: pods are accepted but never run.

Given a network namespace, every process runs inside it instead (the e2e test bed's private
cluster network, :mod:`lorafleet_testbed.kuberay_cluster`); health checks and kubectl then run
there too, so starting it needs no forwarding."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from lorafleet_testbed import process
from lorafleet_testbed.pki import ClientCert, ClusterPKI, create_pki
from lorafleet_testbed.toolchain import REPO_ROOT, tool

if TYPE_CHECKING:
    from lorafleet_testbed.netns import NetworkNamespace

T = TypeVar("T")

# KubeRay v1.7.0's CRDs, vendored (tools/kuberay/SOURCE.md).
KUBERAY_CRD_DIR = REPO_ROOT / "tools" / "kuberay" / "crd"
LORAFLEET_CRD_DIR = REPO_ROOT / "crds"

# Only the controllers the tests rely on; the rest would burn CPU on a 2-core machine.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "clusterrole-aggregation-controller",
    "root-ca-certificate-publisher-controller",
)
# Services get Endpoints and EndpointSlices from these: KubeRay counts a RayService's serve
# endpoints from them, and the API server's service proxy resolves a Service through them.
# Only useful where pods get real IPs (the e2e test bed).
ENDPOINT_CONTROLLERS = ("endpoints-controller", "endpointslice-controller")
# The API server's serving certificate names it so (pki.py); a kubeconfig that reaches it at
# another address (the node IP, from a pod) verifies it under this name.
API_SERVER_NAME = "kubernetes.default.svc"


def _kubeconfig(
    server: str,
    ca: Path,
    user: str,
    credentials: dict[str, str],
    *,
    namespace: str = "default",
    tls_server_name: str | None = None,
) -> dict[str, object]:
    cluster = {"server": server, "certificate-authority": str(ca)}
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lorafleet-local", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {
                "name": "lorafleet-local",
                "context": {"cluster": "lorafleet-local", "user": user, "namespace": namespace},
            }
        ],
        "current-context": "lorafleet-local",
    }


def _client_credentials(client: ClientCert) -> dict[str, str]:
    return {"client-certificate": str(client.cert), "client-key": str(client.key)}


def write_token_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    token: str,
    *,
    namespace: str = "default",
    tls_server_name: str | None = None,
) -> Path:
    """A kubeconfig that authenticates with a bearer token only (e.g. a ServiceAccount's),
    so RBAC decisions are made for that identity, not the admin."""
    config = _kubeconfig(
        server,
        ca,
        "token-user",
        {"token": token},
        namespace=namespace,
        tls_server_name=tls_server_name,
    )
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass
class ControlPlaneState:
    """What ``make cluster-down`` needs to find a detached control plane again."""

    data_dir: str
    kubeconfig: str
    server: str
    pids: dict[str, int] = field(default_factory=dict)
    # Paths of the PKI's files (ClusterPKI as JSON), so another process can mint kubeconfigs.
    pki: dict[str, Any] = field(default_factory=dict)


def _pki_record(pki: ClusterPKI) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(json.dumps(asdict(pki), default=str))
    return record


def _pki_from_record(record: dict[str, Any]) -> ClusterPKI:
    values: dict[str, Any] = {}
    for item in fields(ClusterPKI):
        value = record[item.name]
        values[item.name] = (
            ClientCert(Path(value["cert"]), Path(value["key"]))
            if isinstance(value, dict)
            else Path(value)
        )
    return ClusterPKI(**values)


class ControlPlane:
    """Start with :meth:`start`; stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(
        self, data_dir: Path, *, owns_data_dir: bool, netns: NetworkNamespace | None = None
    ) -> None:
        self.data_dir = data_dir
        self.owns_data_dir = owns_data_dir
        self.netns = netns
        self.processes: list[process.ManagedProcess] = []
        self.kubeconfig = data_dir / "kubeconfig"
        self.server = ""
        self.pki: ClusterPKI | None = None
        # How each process was started, so a fault test can kill one and start it again
        # exactly so (same ports, data directory and certificates).
        self._argv: dict[str, list[str]] = {}
        self._detach = False
        self._etcd_url = ""

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(
        cls,
        data_dir: Path | None = None,
        *,
        detach: bool = False,
        controller_manager: bool = True,
        crd_dirs: Sequence[Path] = (KUBERAY_CRD_DIR, LORAFLEET_CRD_DIR),
        extra_controllers: Sequence[str] = (),
        netns: NetworkNamespace | None = None,
        bind_address: str = "127.0.0.1",
    ) -> ControlPlane:
        """``extra_controllers``: more kube-controller-manager controllers (e.g.
        :data:`ENDPOINT_CONTROLLERS`). ``netns``: run everything inside that network
        namespace. ``bind_address``: where the API server listens (``0.0.0.0`` inside a
        private namespace, so pods there reach it at the node IP)."""
        owns = data_dir is None
        directory = Path(tempfile.mkdtemp(prefix="lorafleet-cp-")) if data_dir is None else data_dir
        directory.mkdir(parents=True, exist_ok=True)
        plane = cls(directory, owns_data_dir=owns, netns=netns)
        try:
            plane._start(
                detach=detach,
                controller_manager=controller_manager,
                controllers=(*CONTROLLERS, *extra_controllers),
                bind_address=bind_address,
            )
            plane.install_crds(crd_dirs)
        except BaseException:
            plane.stop()
            raise
        return plane

    def _start(
        self,
        *,
        detach: bool,
        controller_manager: bool,
        controllers: Sequence[str],
        bind_address: str,
    ) -> None:
        logs = self.data_dir / "logs"
        self.pki = pki = create_pki(self.data_dir / "pki")
        etcd_port, etcd_peer_port, api_port = (process.free_port() for _ in range(3))
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._etcd_url = etcd_url
        self._detach = detach

        etcd = self._launch(
            "etcd",
            [
                str(tool("etcd")),
                "--name=lorafleet-local",
                f"--data-dir={self.data_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-cluster=lorafleet-local=http://127.0.0.1:{etcd_peer_port}",
                "--listen-metrics-urls=",
                # Test data is disposable: skipping fsync makes etcd several times faster here.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            logs,
            detach=detach,
        )
        self.processes.append(etcd)
        process.wait_until(
            etcd,
            lambda: self.inside(lambda: process.http_ok(f"{etcd_url}/health")),
            timeout=30,
            what="healthy",
        )

        self.server = f"https://127.0.0.1:{api_port}"
        apiserver = self._launch(
            "kube-apiserver",
            [
                str(tool("kube-apiserver")),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={bind_address}",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.data_dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki.sa_public_key}",
                f"--service-account-signing-key-file={pki.sa_private_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                # The loopback advertise address cannot be an Endpoints address; nothing here
                # needs the in-cluster `kubernetes` Service to have endpoints.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
            logs,
            detach=detach,
        )
        self.processes.append(apiserver)
        ctx = self._ssl_context()
        process.wait_until(
            apiserver,
            lambda: self.inside(
                lambda: process.http_ok(f"{self.server}/readyz", ssl_context=ctx, expect_body=b"ok")
            ),
            timeout=90,
            what="ready (/readyz)",
        )
        self.kubeconfig.write_text(
            yaml.safe_dump(
                _kubeconfig(
                    self.server, pki.ca_cert, "lorafleet-admin", _client_credentials(pki.admin)
                )
            )
        )

        if controller_manager:
            kcm_config = self.data_dir / "controller-manager.kubeconfig"
            kcm_config.write_text(
                yaml.safe_dump(
                    _kubeconfig(
                        self.server,
                        pki.ca_cert,
                        "system:kube-controller-manager",
                        _client_credentials(pki.controller_manager),
                    )
                )
            )
            kcm = self._launch(
                "kube-controller-manager",
                [
                    str(tool("kube-controller-manager")),
                    f"--kubeconfig={kcm_config}",
                    "--secure-port=0",
                    "--leader-elect=false",
                    "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki.sa_private_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    f"--controllers={','.join(controllers)}",
                    "--concurrent-gc-syncs=5",
                ],
                logs,
                detach=detach,
            )
            self.processes.append(kcm)
            # The service-account controller creating `default` shows the manager is working.
            process.wait_until(
                kcm,
                lambda: (
                    self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0
                ),
                timeout=60,
                what="managing service accounts",
            )

    def _inside(self, argv: list[str]) -> list[str]:
        return self.netns.argv(argv) if self.netns else argv

    def _launch(
        self, name: str, argv: list[str], logs: Path, *, detach: bool
    ) -> process.ManagedProcess:
        self._argv[name] = argv
        return process.start(name, self._inside(argv), logs, detach=detach)

    # ------------------------------------------------------------------ faults
    def _process(self, name: str) -> process.ManagedProcess:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(f"no {name} process in this control plane")

    def _restart(self, name: str, down_seconds: float) -> process.ManagedProcess:
        """SIGKILL ``name`` (a crash: no graceful shutdown), wait ``down_seconds``, then start
        it again with the same command line (ports, data directory, certificates)."""
        old = self._process(name)
        old.popen.kill()
        old.popen.wait(timeout=10)
        time.sleep(down_seconds)
        new = process.start(
            name, self._inside(self._argv[name]), self.data_dir / "logs", detach=self._detach
        )
        self.processes[self.processes.index(old)] = new
        return new

    def _wait_api_ready(self, proc: process.ManagedProcess, timeout: float = 90) -> None:
        ctx = self._ssl_context()
        process.wait_until(
            proc,
            lambda: self.inside(
                lambda: process.http_ok(f"{self.server}/readyz", ssl_context=ctx, expect_body=b"ok")
            ),
            timeout=timeout,
            what="ready (/readyz)",
        )

    def api_ready(self) -> bool:
        """Whether the API server answers /readyz with ok right now."""
        ctx = self._ssl_context()
        return self.inside(
            lambda: process.http_ok(f"{self.server}/readyz", ssl_context=ctx, expect_body=b"ok")
        )

    def restart_apiserver(self, *, down_seconds: float = 0.0) -> None:
        """Crash the API server and start it again on the same port; returns once it is
        ready. Clients see refused connections meanwhile; their watches break."""
        new = self._restart("kube-apiserver", down_seconds)
        self._wait_api_ready(new)

    def restart_etcd(self, *, down_seconds: float = 0.0) -> None:
        """Crash etcd and start it again on the same ports and data directory; returns once
        the API server (still running) is ready again. Meanwhile the API server answers, but
        with errors; its watch caches resume from etcd afterwards."""
        new = self._restart("etcd", down_seconds)
        process.wait_until(
            new,
            lambda: self.inside(lambda: process.http_ok(f"{self._etcd_url}/health")),
            timeout=30,
            what="healthy",
        )
        self._wait_api_ready(self._process("kube-apiserver"))

    def inside(self, check: Callable[[], T]) -> T:
        """Run ``check`` where the control plane's loopback addresses are (its namespace)."""
        return self.netns.call(check) if self.netns else check()

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return ctx

    def stop(self) -> None:
        """Stop every process (controller manager first, etcd last) and remove owned data."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def state(self) -> ControlPlaneState:
        return ControlPlaneState(
            data_dir=str(self.data_dir),
            kubeconfig=str(self.kubeconfig),
            server=self.server,
            pids={p.name: p.pid for p in self.processes},
            pki=_pki_record(self.pki) if self.pki else {},
        )

    @classmethod
    def attach(
        cls, state: ControlPlaneState, *, netns: NetworkNamespace | None = None
    ) -> ControlPlane:
        """A handle on a control plane another process started (detached): kubectl and
        kubeconfigs work; its processes are not this handle's to stop."""
        plane = cls(Path(state.data_dir), owns_data_dir=False, netns=netns)
        plane.kubeconfig = Path(state.kubeconfig)
        plane.server = state.server
        plane.pki = _pki_from_record(state.pki) if state.pki else None
        return plane

    # ------------------------------------------------------------------ helpers
    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane."""
        result = subprocess.run(
            self._inside([str(tool("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]),
            capture_output=True,
            text=True,
            input=input_text,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """A kubeconfig that authenticates with a bearer token only (e.g. a ServiceAccount's),
        so RBAC decisions are made for that identity, not the admin."""
        assert self.pki is not None
        return write_token_kubeconfig(path, self.server, self.pki.ca_cert, token)

    def install_crds(self, directories: Iterable[Path]) -> list[str]:
        """Server-side apply every CRD found (KubeRay's are ~1 MB: too big for the
        client-side last-applied annotation) and wait until each is Established."""
        files = sorted(
            f
            for d in directories
            if d.is_dir()
            for f in d.iterdir()
            if f.suffix in (".yaml", ".yml")
        )
        names: list[str] = []
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    names.append(doc["metadata"]["name"])
        if not files:
            return names
        args = ["apply", "--server-side", "--force-conflicts", "--field-manager=lorafleet-testbed"]
        for f in files:
            args += ["-f", str(f)]
        self.kubectl(*args)
        if names:
            self.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names]
            )
        return names


def save_state(state: ControlPlaneState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(state), indent=2))


def load_state(path: Path) -> ControlPlaneState | None:
    if not path.exists():
        return None
    return ControlPlaneState(**json.loads(path.read_text()))


def stop_detached(state: ControlPlaneState) -> None:
    """Stop a control plane started with ``detach=True`` by another process."""
    order = ["kube-controller-manager", "kube-apiserver", "etcd"]
    for name in sorted(state.pids, key=lambda n: order.index(n) if n in order else -1):
        process.stop_pid(state.pids[name])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process.pid_alive(p) for p in state.pids.values()):
        time.sleep(0.1)
    shutil.rmtree(state.data_dir, ignore_errors=True)
