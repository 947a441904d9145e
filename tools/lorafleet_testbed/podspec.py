"""What the test bed's kubelet stand-in (:mod:`lorafleet_testbed.raypods`) derives from a pod:
its container's environment as a kubelet builds it, the Ray start line, the head Service names
to stand in for cluster DNS, readiness state and the status patch that publishes it. Pure:
dicts in, values out (Secrets and ConfigMaps come through a lookup function)."""

from __future__ import annotations

import base64
import logging
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("lorafleet_testbed.raypods")

RAY_CONTAINER_INDEX: Final = 0  # KubeRay's utils.RayContainerIndex
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_MAP = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")


class PodStartError(RuntimeError):
    """The pod cannot start yet (a Secret, its head pod, its service account missing)."""


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    lookup: Callable[[str, str], Mapping[str, Any] | None],
) -> dict[str, str]:
    """The environment a kubelet gives ``container`` of ``pod``: ``envFrom`` first, then
    ``env`` in order with ``$(VAR)`` expanded. ``lookup(kind, name)`` returns a ConfigMap or
    Secret of the pod's namespace (None when missing); Secret values are base64 decoded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []) or []:
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = lookup(kind, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise PodStartError(f"{kind[:-1]} {ref['name']} not found")
            for name, value in _data(kind, obj).items():
                env[source.get("prefix", "") + name] = value
    for var in container.get("env", []) or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand_references(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind, ref = (
                ("secrets", source["secretKeyRef"])
                if "secretKeyRef" in source
                else ("configmaps", source["configMapKeyRef"])
            )
            obj = lookup(kind, ref["name"])
            found = None if obj is None else _data(kind, obj).get(ref["key"])
            if found is None:
                if ref.get("optional"):
                    continue
                raise PodStartError(f"{kind[:-1]} {ref['name']} has no key {ref['key']}")
            env[name] = found
        else:
            log.warning("Ignored env %s of pod %s: unsupported source %s", name,
                        pod["metadata"]["name"], sorted(source))  # fmt: skip
    return env


def _data(kind: str, obj: Mapping[str, Any]) -> dict[str, str]:
    if kind == "secrets":
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def expand_references(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables are substituted, undefined ones
    left as written, ``$$`` escapes a dollar."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, value)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A ``fieldRef`` of the downward API."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    mapped = _FIELD_MAP.fullmatch(path)
    if mapped:
        return str((meta.get(mapped.group(1)) or {}).get(mapped.group(2), ""))
    values = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.hostIPs": ",".join(a["ip"] for a in status.get("hostIPs", []) or []),
        "status.podIP": status.get("podIP", ""),
        "status.podIPs": ",".join(a["ip"] for a in status.get("podIPs", []) or []),
    }
    if path not in values:
        raise PodStartError(f"unsupported fieldRef {path}")
    return str(values[path])


def head_service_names(env: Mapping[str, str]) -> list[str]:
    """The DNS names by which a worker's environment names its head Service (KubeRay sets
    ``FQ_RAY_IP`` to ``<svc>.<namespace>.svc.<cluster domain>`` and ``RAY_IP`` to ``<svc>``),
    longest first, with every shorter form a resolver's search list would accept."""
    names: set[str] = set()
    if fq := env.get("FQ_RAY_IP"):
        labels = fq.split(".")
        names.update(".".join(labels[:n]) for n in range(1, len(labels) + 1))
    if short := env.get("RAY_IP"):
        names.add(short)
    return sorted(names, key=len, reverse=True)


def replace_hosts(value: str, names: list[str], address: str) -> str:
    """``value`` with each whole host name of ``names`` replaced by ``address`` (there is no
    cluster DNS); a name inside a longer one is left alone."""
    for name in names:
        value = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-]|\.\w)", address, value)
    return value


def ray_start_argv(
    env: Mapping[str, str], ray_executable: str, node_ip: str, temp_dir: Path
) -> list[str]:
    """The Ray container's generated ``ray start`` line, run by ``ray_executable`` on the pod
    IP, blocking (the process is the container), with its own temp dir."""
    line = env.get("KUBERAY_GEN_RAY_START_CMD")
    if not line:
        raise PodStartError("the Ray container has no KUBERAY_GEN_RAY_START_CMD")
    words = shlex.split(line)
    if words[:2] != ["ray", "start"]:
        raise PodStartError(f"unexpected Ray start line {line!r}")
    args = words[2:]
    if "--block" not in args:
        args.append("--block")
    return [
        ray_executable,
        "start",
        *args,
        f"--node-ip-address={node_ip}",
        f"--temp-dir={temp_dir}",
    ]


def is_running(pod: Mapping[str, Any]) -> bool:
    """KWOK has started it (Running with an IP) and nobody is deleting it."""
    status = pod.get("status", {})
    return (
        not pod["metadata"].get("deletionTimestamp")
        and status.get("phase") == "Running"
        and bool(status.get("podIP"))
    )


def condition_true(pod: Mapping[str, Any], kind: str) -> bool:
    conditions = pod.get("status", {}).get("conditions", []) or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def readiness_patch(
    pod: Mapping[str, Any], ready: bool, restarts: int, now: str, last_exit: int | None
) -> dict[str, Any]:
    """A strategic-merge status patch: ``Ready``/``ContainersReady`` and the Ray container's
    status (``containerStatuses`` has no merge key, so the whole list is sent)."""
    ray_name = pod["spec"]["containers"][RAY_CONTAINER_INDEX]["name"]
    statuses = []
    for status in pod.get("status", {}).get("containerStatuses", []) or []:
        status = dict(status)
        if status.get("name") == ray_name:
            status["ready"] = ready
            status["restartCount"] = restarts
            if last_exit is not None:
                status["lastState"] = {"terminated": {"exitCode": last_exit, "reason": "Error"}}
        statuses.append(status)
    conditions = [
        {
            "type": kind,
            "status": "True" if ready else "False",
            "lastTransitionTime": now,
            "reason": None if ready else "ContainersNotReady",  # None removes it
        }
        for kind in ("ContainersReady", "Ready")
    ]
    return {"status": {"conditions": conditions, "containerStatuses": statuses}}


@dataclass
class ReadinessProbe:
    """A container's readinessProbe and the kubelet's state for it."""

    spec: dict[str, Any]
    next_at: float
    successes: int = 0
    failures: int = 0
    in_flight: bool = False

    @classmethod
    def starting(cls, spec: dict[str, Any], started: float) -> ReadinessProbe:
        return cls(spec, started + float(spec.get("initialDelaySeconds", 0)))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def record(self, ok: bool, ready: bool, now: float) -> bool:
        """Count a result; the new readiness (thresholds as the kubelet applies them)."""
        self.in_flight = False
        self.next_at = now + self.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            return ready or self.successes >= int(self.spec.get("successThreshold", 1))
        self.successes, self.failures = 0, self.failures + 1
        return ready and self.failures < int(self.spec.get("failureThreshold", 3))


def container_port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for entry in container.get("ports", []) or []:
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise PodStartError(f"container {container['name']} has no port named {port}")
