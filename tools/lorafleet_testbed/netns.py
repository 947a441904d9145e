"""Network namespaces for the e2e test bed: a private "cluster" namespace that holds the
control plane, and one namespace per Ray pod wired to it by a veth pair (Calico style: the pod
IP as /32 on the pod's eth0, a default route via the node IP, a /32 route back on the cluster
side). The cluster namespace has no link to the host's network, so nothing sent from there can
leave the machine.

Rules this module keeps, because breaking them once sent pod traffic off the machine:

- Addresses of the fake cluster (pod IPs, the node IP) exist only inside our namespaces. In the
  host namespace they follow the host's default route, so :func:`check_destination` refuses a
  connection to any non-loopback address unless the calling thread has joined a namespace this
  module created. Every connection the test bed makes to a pod goes through it.
- Namespaces are created with ``ip netns`` in the host mount namespace (``ip netns exec`` would
  move the caller into a private mount namespace, where the bind mount made by a later
  ``ip netns add`` is invisible to everyone else). Commands run inside a namespace with
  ``nsenter --net``, which changes the network namespace only.
- Every name starts with ``lorafleet-<owner>-``, where the owner is the pid of the process
  whose cluster it is, or ``d`` for a detached cluster (``make demo``: it outlives the command
  that started it); pods' names are their cluster's name, a dot and more. So
  :func:`reap_stale` can remove what a killed test session left, and nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from lorafleet_testbed.process import pid_alive

PREFIX: Final = "lorafleet-"
NETNS_DIR: Final = Path("/run/netns")
_CLONE_NEWNET: Final = 0x40000000
# ip(8) accepts any file name; ours are DNS-ish so they are easy to type and to match.
_NAME = re.compile(r"lorafleet-([0-9]+|d)-[0-9a-f]+(\.[a-z0-9]([a-z0-9.-]*[a-z0-9])?)?")
_DETACHED = "d"
# Pod namespace names longer than this are shortened with a hash (a file name is at most 255).
_MAX_NAME = 120

T = TypeVar("T")


class NetnsError(RuntimeError):
    """A namespace operation failed, or a connection was refused by the guard."""


@dataclass(frozen=True)
class NetworkNamespace:
    """A named network namespace (``/run/netns/<name>``)."""

    name: str

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace. ``nsenter`` execs it (same pid), changing only
        the network namespace: the command can itself create namespaces everyone sees."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this namespace and wait for it."""
        return _run(self.argv(argv), check=check, timeout=timeout, env=env, input_text=input_text)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n <name> ARGS``: configure this namespace without entering it."""
        return _run(["ip", "-n", self.name, *args], check=check)

    def call(self, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run ``fn`` in a new thread that has joined this namespace, and return its result
        (or raise its exception). Only that thread moves; the thread ends with ``fn``, so it
        never keeps the namespace alive."""
        result: list[T] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                join(self)
                result.append(fn())
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                error.append(err)

        thread = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"call in network namespace {self.name} took over {timeout} s")
        if error:
            raise error[0]
        return result[0]

    def pids(self) -> list[int]:
        """Processes whose network namespace this is (``ip netns pids``)."""
        out = _run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def kill_processes(self, timeout: float = 5.0) -> None:
        """SIGTERM every process in this namespace, SIGKILL what is left after ``timeout``.
        Repeats until none is left: a dying Ray node may still start a worker."""
        deadline = time.monotonic() + timeout
        sig = signal.SIGTERM
        while pids := [p for p in self.pids() if pid_alive(p)]:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.2)
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            if time.monotonic() > deadline + 10:
                raise NetnsError(f"processes {pids} in {self.name} did not exit")


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(env) if env is not None else None,
        input=input_text,
    )
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


# ---------------------------------------------------------------------- names
def cluster_name(*, detached: bool = False) -> str:
    """A fresh name for a cluster namespace, owned by this process (or by nobody: detached)."""
    owner = _DETACHED if detached else str(os.getpid())
    return f"{PREFIX}{owner}-{secrets.token_hex(3)}"


def pod_name(cluster: NetworkNamespace, namespace: str, pod: str) -> str:
    """The namespace of pod ``namespace/pod`` in ``cluster``: ``<cluster>.<namespace>.<pod>``."""
    name = f"{cluster.name}.{namespace}.{pod}"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[: _MAX_NAME - 13]}.{digest}"
    return name


def _owner(name: str) -> str:
    return name.removeprefix(PREFIX).split("-", 1)[0]


def _cluster_of(name: str) -> str:
    return name.split(".", 1)[0]


# ---------------------------------------------------------------------- lifecycle
def create(name: str) -> NetworkNamespace:
    """Create namespace ``name`` (a name from :func:`cluster_name` or :func:`pod_name`) with
    its loopback up. Refuses a name that exists: it would belong to someone else."""
    if not _NAME.fullmatch(name):
        raise NetnsError(f"not a lorafleet namespace name: {name!r}")
    ns = NetworkNamespace(name)
    if ns.exists():
        raise NetnsError(f"network namespace {name} exists already")
    _run(["ip", "netns", "add", name])
    try:
        ns.ip("link", "set", "lo", "up")
    except BaseException:
        delete(ns)
        raise
    return ns


def delete(ns: NetworkNamespace, *, timeout: float = 5.0) -> None:
    """Kill every process in ``ns`` and remove it. Quiet when it is gone already."""
    if not ns.exists():
        return
    ns.kill_processes(timeout)
    _run(["ip", "netns", "delete", ns.name], check=False)


def namespaces(prefix: str = PREFIX) -> list[NetworkNamespace]:
    """Our namespaces whose names start with ``prefix``, by reading ``/run/netns``."""
    try:
        names = sorted(entry.name for entry in os.scandir(NETNS_DIR))
    except FileNotFoundError:
        return []
    return [NetworkNamespace(n) for n in names if n.startswith(prefix) and n.startswith(PREFIX)]


def _stale(ns: NetworkNamespace) -> bool:
    owner = _owner(ns.name)
    if owner == _DETACHED:  # nobody owns it: stale once nothing runs in it any more
        return not ns.pids()
    return not pid_alive(int(owner))


def reap_stale() -> list[str]:
    """Remove what killed sessions left, with every process still in it: cluster namespaces
    whose owner process is gone (a detached one: once nothing runs in it), and pod namespaces
    whose cluster namespace is gone. A namespace in use is never touched."""
    removed: list[str] = []
    everything = namespaces()
    clusters = {ns.name: ns for ns in everything if "." not in ns.name}
    stale = {name for name, ns in clusters.items() if _NAME.fullmatch(name) and _stale(ns)}
    for ns in everything:
        if "." not in ns.name or not _NAME.fullmatch(ns.name):
            continue
        cluster = _cluster_of(ns.name)
        if cluster not in clusters or cluster in stale:
            delete(ns)
            removed.append(ns.name)
    for name in sorted(stale):
        delete(clusters[name])
        removed.append(name)
    return removed


def remove_cluster(name: str) -> None:
    """Remove cluster namespace ``name``, its pods' namespaces and every process in them."""
    for ns in namespaces(f"{name}."):
        delete(ns)
    delete(NetworkNamespace(name))


# ---------------------------------------------------------------------- wiring
def setup_cluster(ns: NetworkNamespace, node_ip: str) -> None:
    """Give the cluster namespace the node IP (on its loopback: answered for every pod) and
    let it route between pods. It gets no default route: pod traffic for anywhere else dies
    here."""
    ns.ip("addr", "add", f"{node_ip}/32", "dev", "lo")
    ns.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])


def veth_name(pod: NetworkNamespace) -> str:
    """The cluster side of a pod's veth pair (interface names are at most 15 bytes)."""
    return "lf" + hashlib.sha256(pod.name.encode()).hexdigest()[:12]


def wire_pod(cluster: NetworkNamespace, pod: NetworkNamespace, ip: str, gateway: str) -> None:
    """Join ``pod`` to ``cluster``: ``eth0`` in the pod with ``ip``/32 and a default route via
    ``gateway`` (the node IP), and a /32 route to ``ip`` on the cluster side."""
    ipaddress.ip_address(ip)  # a typo must not become an ip(8) argument
    host_side = veth_name(pod)
    _run(
        [
            "ip", "link", "add", host_side, "netns", cluster.name,
            "type", "veth", "peer", "name", "eth0", "netns", pod.name,
        ]
    )  # fmt: skip
    pod.ip("addr", "add", f"{ip}/32", "dev", "eth0")
    pod.ip("link", "set", "eth0", "up")
    pod.ip("route", "add", gateway, "dev", "eth0", "scope", "link")
    pod.ip("route", "add", "default", "via", gateway, "dev", "eth0")
    cluster.ip("link", "set", host_side, "up")
    # `replace`: a recreated pod may get the IP of one whose route is still being torn down.
    cluster.ip("route", "replace", f"{ip}/32", "dev", host_side)


def wait_unwired(cluster: NetworkNamespace, pod: NetworkNamespace, timeout: float = 10.0) -> None:
    """After deleting ``pod``: wait until the kernel has removed its veth pair (and so its
    route), which happens once the last process in it is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.ip("link", "show", veth_name(pod), check=False).returncode != 0:
            return
        time.sleep(0.2)


# ---------------------------------------------------------------------- joining and the guard
def join(ns: NetworkNamespace) -> None:
    """Move the calling thread (only it) into ``ns`` with setns(2). Python 3.11 has no
    ``os.setns``, hence ctypes."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NetnsError(f"setns into {ns.name} failed: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _identity(path: str | Path) -> tuple[int, int]:
    st = Path(path).stat()
    return st.st_dev, st.st_ino


def current_namespace() -> NetworkNamespace | None:
    """The namespace of ours the calling thread is in; None in any other (the host's)."""
    here = _identity("/proc/thread-self/ns/net")
    for ns in namespaces():
        with contextlib.suppress(OSError):
            if _identity(ns.path) == here:
                return ns
    return None


def check_destination(host: str) -> None:
    """Refuse to connect to ``host`` unless it is loopback, or the calling thread is inside a
    namespace this module made (where pod and node IPs exist). Only IP literals and
    ``localhost`` are accepted: a name could resolve anywhere."""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NetnsError(f"refusing to connect to {host!r}: not an IP address") from None
    if address.is_loopback:
        return
    if current_namespace() is None:
        raise NetnsError(
            f"refusing to connect to {host} from outside the test bed's network namespaces: "
            "there it would follow the host's default route off this machine"
        )


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """``socket.create_connection`` behind :func:`check_destination`."""
    check_destination(host)
    return socket.create_connection((host, port), timeout=timeout)
