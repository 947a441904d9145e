"""A kubelet stand-in for Ray pods ("kubelet-lite"): runs, on this machine, the Ray node that
KubeRay put in each pod, so RayServices reach Ready through the real KubeRay.

KWOK plays the Node's kubelet for the API (a scheduled pod becomes Running with a pod IP, but
not Ready: ``kwok-stages.yaml``). This process does the rest, for pods labelled
``ray.io/is-ray-node=yes`` on its Node:

- per pod, a network namespace holding the pod IP (:func:`netns.wire_pod`), and in it, in a
  PID namespace of its own, the ``ray start ... --block`` line KubeRay generated for the Ray
  container (``KUBERAY_GEN_RAY_START_CMD``) run by this interpreter's ``ray``;
- the container's environment as a kubelet builds it: plain values, ``fieldRef``,
  ``secretKeyRef`` / ``configMapKeyRef`` and ``envFrom`` read from the API, ``$(VAR)``
  references; then the test bed's extra variables (code an image would contain, ...);
- a service-account token minted with the TokenRequest API for the pod's
  ``serviceAccountName`` (bound to the pod), handed to Ray as a kubeconfig (``KUBECONFIG``)
  that reaches the API server at the node IP: the runtime reads the catalog index with exactly
  that identity;
- the readiness probe (``exec`` inside the pod's namespace, ``httpGet``/``tcpSocket`` from the
  node's, as a kubelet does), with its initial delay, period, timeout and thresholds; the
  pod's ``Ready`` condition is patched accordingly;
- ``restartPolicy: Always``: a Ray node that exits is started again (with back-off) after its
  leftover processes are killed; a deleted pod's processes are killed and its namespace removed.

What differs from a kubelet: there is no cluster DNS, so the head Service's DNS name in the
worker's start line and environment is replaced by the head pod's IP; liveness probes, init
containers, volumes and resource limits are ignored; ``resourceFieldRef`` is not supported.
Never ``ray stop``: it kills Ray processes machine-wide. A pod's processes are found by its
network namespace instead.

Runs as ``python -m lorafleet_testbed.raypods --config FILE`` inside the cluster namespace
(``nsenter --net``: the mount namespace stays the host's, so the namespaces it creates are
visible to all)."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from lorafleet_testbed import netns, process
from lorafleet_testbed.controlplane import API_SERVER_NAME, write_token_kubeconfig
from lorafleet_testbed.kubeapi import ApiError, Credentials, KubeAPI
from lorafleet_testbed.podspec import (
    RAY_CONTAINER_INDEX,
    PodStartError,
    ReadinessProbe,
    condition_true,
    container_env,
    container_port,
    head_service_names,
    is_running,
    ray_start_argv,
    readiness_patch,
    replace_hosts,
)

log = logging.getLogger("lorafleet_testbed.raypods")

RAY_NODE_SELECTOR: Final = "ray.io/is-ray-node=yes"
# What every Ray pod gets before its own env. A pod has no ~/.ray/auth_token, but this machine
# may: Ray would find it and turn token auth on, and KubeRay's dashboard calls would get 401.
DEFAULT_POD_ENV: Final = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# Each pod's processes get a PID namespace (and a /proc) of their own, as a container's do.
# Ray looks for running clusters in /proc: `ray start --head` refuses to start while any
# process on the machine names its GCS address, which a worker pod's raylet does. The kernel
# kills everything in the namespace when its first process (Ray's) is gone, which
# --kill-child ensures when unshare goes, and SIGKILL when this kubelet dies (unshare ignores
# the SIGTERM that test bed processes get from their dying parent).
POD_SANDBOX: Final = (
    "setpriv", "--pdeathsig=KILL", "--",
    "unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--",
)  # fmt: skip
# Exec probes start nsenter + a shell before the probed command: on a busy 2-core machine that
# alone can take most of KubeRay's 2 s probe timeout.
EXEC_PROBE_SLACK_SECONDS: Final = 1.0


@dataclass(frozen=True)
class KubeletConfig:
    """Everything the kubelet stand-in needs; written as JSON by the cluster that starts it."""

    cluster_netns: str
    node_name: str
    node_ip: str
    api: Credentials
    pod_api_server: str
    data_dir: Path
    ray_temp_dir: Path
    ray_executable: str
    pod_env: dict[str, str] = field(default_factory=dict)
    poll_seconds: float = 1.0
    token_seconds: int = 30 * 24 * 3600
    stop_grace_seconds: float = 3.0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def load(cls, path: Path) -> KubeletConfig:
        raw = json.loads(path.read_text())
        api = raw.pop("api")
        return cls(
            api=Credentials(
                server=api["server"],
                ca_cert=Path(api["ca_cert"]),
                client_cert=Path(api["client_cert"]),
                client_key=Path(api["client_key"]),
            ),
            data_dir=Path(raw.pop("data_dir")),
            ray_temp_dir=Path(raw.pop("ray_temp_dir")),
            **raw,
        )


def probe_once(
    spec: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_ip: str,
    pod_ns: netns.NetworkNamespace,
    env: Mapping[str, str],
) -> tuple[bool, str]:
    """Run one probe: ``exec`` inside the pod's namespace with the container's environment;
    ``httpGet`` and ``tcpSocket`` from this (the node's) namespace to the pod IP."""
    timeout = float(spec.get("timeoutSeconds", 1))
    if "exec" in spec:
        try:
            result = subprocess.run(
                pod_ns.argv(spec["exec"]["command"]),
                env=dict(env),
                capture_output=True,
                text=True,
                timeout=timeout + EXEC_PROBE_SLACK_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:.0f} s"
        output = " ".join((result.stdout + result.stderr).split())
        return result.returncode == 0, output[-300:] or f"exit code {result.returncode}"
    if "httpGet" in spec or "tcpSocket" in spec:
        action = spec.get("httpGet") or spec["tcpSocket"]
        host = action.get("host") or pod_ip
        port = container_port(container, action["port"])
        try:
            if "tcpSocket" in spec:
                netns.connect(host, port, timeout).close()
                return True, "connected"
            netns.check_destination(host)
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                conn.request("GET", action.get("path", "/"))
                status = conn.getresponse().status
            finally:
                conn.close()
        except (OSError, netns.NetnsError) as err:
            return False, str(err)
        return 200 <= status < 400, f"HTTP {status}"
    return True, f"probe kind not supported ({sorted(spec)}): counted as success"


# ---------------------------------------------------------------------- the kubelet
@dataclass
class RayPod:
    """One pod this kubelet runs: its namespace, its Ray process, its readiness."""

    uid: str
    namespace: str
    name: str
    ip: str
    netns: netns.NetworkNamespace
    directory: Path
    proc: process.ManagedProcess | None = None
    env: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0
    ready: bool = False
    restarts: int = 0
    last_exit: int | None = None
    not_before: float = 0.0
    probe: ReadinessProbe | None = None
    generation: int = 0
    waiting_for: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class RayKubelet:
    def __init__(self, config: KubeletConfig, api: KubeAPI) -> None:
        self.config = config
        self.api = api
        self.cluster = netns.NetworkNamespace(config.cluster_netns)
        self.pods: dict[str, RayPod] = {}
        self._results: queue.SimpleQueue[tuple[str, int, bool, str]] = queue.SimpleQueue()

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event) -> None:
        log.info("Started the Ray pod kubelet for node %s", self.config.node_name)
        while not stop.is_set():
            try:
                self.sync()
            except (ApiError, OSError, netns.NetnsError, subprocess.SubprocessError) as err:
                # A kubelet keeps going: the next round sees the cluster afresh.
                log.warning("Skipped a sync: %s", err)
            stop.wait(self.config.poll_seconds)
        self.shutdown()

    def sync(self) -> None:
        items = self.api.list_pods(RAY_NODE_SELECTOR, f"spec.nodeName={self.config.node_name}")
        live = {p["metadata"]["uid"]: p for p in items if is_running(p)}
        for uid in list(self.pods):
            if uid not in live:
                self._stop(self.pods.pop(uid), reason="deleted")
        heads = {
            (p["metadata"]["namespace"], p["metadata"]["labels"].get("ray.io/cluster")): p
            for p in live.values()
            if p["metadata"]["labels"].get("ray.io/node-type") == "head"
        }
        for uid, pod in live.items():
            ray_pod = self.pods.get(uid) or self._adopt(pod)
            self._keep_running(ray_pod, pod, heads)
        self._collect_probe_results()
        for uid, pod in live.items():
            self._probe_if_due(self.pods[uid], pod)
            self._publish_readiness(self.pods[uid], pod)

    def shutdown(self) -> None:
        for ray_pod in list(self.pods.values()):
            self._stop(ray_pod, reason="the kubelet is stopping")
        self.pods.clear()
        log.info("Stopped the Ray pod kubelet")

    # ------------------------------------------------------------------ pods
    def _adopt(self, pod: dict[str, Any]) -> RayPod:
        meta = pod["metadata"]
        pod_ns = netns.NetworkNamespace(
            netns.pod_name(self.cluster, meta["namespace"], meta["name"])
        )
        ray_pod = RayPod(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            ip=pod["status"]["podIP"],
            netns=pod_ns,
            directory=self.config.data_dir / f"{meta['namespace']}.{meta['name']}",
        )
        self.pods[ray_pod.uid] = ray_pod
        return ray_pod

    def _keep_running(
        self, ray_pod: RayPod, pod: dict[str, Any], heads: Mapping[tuple[str, str], dict[str, Any]]
    ) -> None:
        proc = ray_pod.proc
        if proc is not None and proc.alive():
            return
        now = time.monotonic()
        if proc is not None:  # exited: a container restart, the pod's sandbox stays
            code = proc.popen.returncode
            ray_pod.proc, ray_pod.last_exit = None, code
            ray_pod.restarts += 1
            ray_pod.ready, ray_pod.probe = False, None
            ray_pod.netns.kill_processes(self.config.stop_grace_seconds)
            quick = now - ray_pod.started_at < 30
            delay = min(2.0 ** min(ray_pod.restarts, 5), 30.0) if quick else 1.0
            ray_pod.not_before = now + delay
            log.info("Ray node of pod %s exited with code %s; restarting in %.0f s",
                     ray_pod.key, code, delay)  # fmt: skip
        if now < ray_pod.not_before:
            return
        try:
            self._start(ray_pod, pod, heads)
            ray_pod.waiting_for = ""
        except (PodStartError, ApiError, netns.NetnsError, OSError) as err:
            # Tried again next round, as a kubelet retries a pod it cannot start yet.
            if str(err) != ray_pod.waiting_for:
                log.info("Pod %s waits: %s", ray_pod.key, err)
                ray_pod.waiting_for = str(err)

    def _start(
        self, ray_pod: RayPod, pod: dict[str, Any], heads: Mapping[tuple[str, str], dict[str, Any]]
    ) -> None:
        labels = pod["metadata"]["labels"]
        container = pod["spec"]["containers"][RAY_CONTAINER_INDEX]
        env = container_env(pod, container, lambda kind, name: self._lookup(pod, kind, name))
        if labels.get("ray.io/node-type") != "head":
            head = heads.get((ray_pod.namespace, labels.get("ray.io/cluster", "")))
            if head is None:
                raise PodStartError("its head pod is not running yet")
            names = head_service_names(env)
            head_ip = head["status"]["podIP"]
            env = {key: replace_hosts(value, names, head_ip) for key, value in env.items()}
        argv = ray_start_argv(
            env,
            self.config.ray_executable,
            ray_pod.ip,
            self.config.ray_temp_dir / ray_pod.uid[:8],
        )
        ray_pod.directory.mkdir(parents=True, exist_ok=True)
        full_env = {**DEFAULT_POD_ENV, **env, **self.config.pod_env}
        kubeconfig = self._service_account_kubeconfig(pod, ray_pod.directory)
        if kubeconfig is not None:
            full_env["KUBECONFIG"] = str(kubeconfig)
        if not ray_pod.netns.exists():
            self._make_sandbox(ray_pod)
        ray_pod.env = full_env
        ray_pod.proc = process.start(
            "ray", ray_pod.netns.argv([*POD_SANDBOX, *argv]), ray_pod.directory, env=full_env
        )
        ray_pod.started_at = time.monotonic()
        ray_pod.generation += 1
        probe = container.get("readinessProbe")
        ray_pod.probe = ReadinessProbe.starting(probe, ray_pod.started_at) if probe else None
        ray_pod.ready = probe is None
        log.info("Started Ray for pod %s on %s (log %s)", ray_pod.key, ray_pod.ip,
                 ray_pod.proc.log_path)  # fmt: skip

    def _make_sandbox(self, ray_pod: RayPod) -> None:
        # A namespace of this name can only be left over from a kubelet that was killed.
        netns.delete(ray_pod.netns)
        netns.wait_unwired(self.cluster, ray_pod.netns)
        netns.create(ray_pod.netns.name)
        try:
            netns.wire_pod(self.cluster, ray_pod.netns, ray_pod.ip, self.config.node_ip)
        except BaseException:
            netns.delete(ray_pod.netns)
            raise

    def _stop(self, ray_pod: RayPod, *, reason: str) -> None:
        netns.delete(ray_pod.netns, timeout=self.config.stop_grace_seconds)
        if ray_pod.proc is not None:  # killed with the namespace; reap it (never kill by pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                ray_pod.proc.popen.wait(timeout=5)
        netns.wait_unwired(self.cluster, ray_pod.netns)
        log.info("Stopped pod %s (%s) and removed its network namespace", ray_pod.key, reason)

    def _lookup(self, pod: Mapping[str, Any], kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get(pod["metadata"]["namespace"], kind, name)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def _service_account_kubeconfig(self, pod: Mapping[str, Any], directory: Path) -> Path | None:
        spec = pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return None
        namespace = pod["metadata"]["namespace"]
        account = spec.get("serviceAccountName") or "default"
        token = self.api.service_account_token(
            namespace, account, dict(pod), self.config.token_seconds
        )
        return write_token_kubeconfig(
            directory / "kubeconfig",
            self.config.pod_api_server,
            self.config.api.ca_cert,
            token,
            namespace=namespace,
            tls_server_name=API_SERVER_NAME,
        )

    # ------------------------------------------------------------------ readiness
    def _probe_if_due(self, ray_pod: RayPod, pod: dict[str, Any]) -> None:
        probe = ray_pod.probe
        if ray_pod.proc is None or probe is None or probe.in_flight:
            return
        if time.monotonic() < probe.next_at:
            return
        probe.in_flight = True
        container = pod["spec"]["containers"][RAY_CONTAINER_INDEX]
        uid, generation = ray_pod.uid, ray_pod.generation
        args = (probe.spec, container, ray_pod.ip, ray_pod.netns, ray_pod.env)

        def run() -> None:
            ok, detail = probe_once(*args)
            self._results.put((uid, generation, ok, detail))

        threading.Thread(target=run, name=f"probe-{ray_pod.name}", daemon=True).start()

    def _collect_probe_results(self) -> None:
        while True:
            try:
                uid, generation, ok, detail = self._results.get_nowait()
            except queue.Empty:
                return
            ray_pod = self.pods.get(uid)
            if ray_pod is None or ray_pod.generation != generation or ray_pod.probe is None:
                continue  # a result about a container that is gone
            was = ray_pod.ready
            ray_pod.ready = ray_pod.probe.record(ok, was, time.monotonic())
            if ray_pod.ready != was:
                log.info("Pod %s became %s (%s)", ray_pod.key,
                         "ready" if ray_pod.ready else "not ready", detail)  # fmt: skip

    def _publish_readiness(self, ray_pod: RayPod, pod: dict[str, Any]) -> None:
        ray_name = pod["spec"]["containers"][RAY_CONTAINER_INDEX]["name"]
        current: dict[str, Any] = next(
            (s for s in pod["status"].get("containerStatuses", []) or [] if s["name"] == ray_name),
            {},
        )
        if (
            condition_true(pod, "Ready") == ray_pod.ready
            and current.get("restartCount", 0) == ray_pod.restarts
        ):
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        patch = readiness_patch(pod, ray_pod.ready, ray_pod.restarts, now, ray_pod.last_exit)
        self.api.patch_pod_status(ray_pod.namespace, ray_pod.name, patch)


def _pod_environment_only() -> None:
    # A pod's environment comes from its spec, not from whoever started the test bed: drop the
    # caller's Kubernetes and Ray settings (their KUBECONFIG is the admin's, for one).
    for key in list(os.environ):
        if key == "KUBECONFIG" or key.startswith("RAY_"):
            del os.environ[key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorafleet_testbed.raypods")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = KubeletConfig.load(args.config)
    here = netns.current_namespace()
    if here is None or here.name != config.cluster_netns:
        log.error("Refused to start outside network namespace %s", config.cluster_netns)
        return 2
    _pod_environment_only()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    RayKubelet(config, KubeAPI(config.api)).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
