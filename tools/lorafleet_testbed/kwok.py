"""One fake Node for the e2e test bed: kube-scheduler binds pods to it and KWOK plays its
kubelet towards the API with the stages in ``kwok-stages.yaml`` (Node Ready; a pod Running
with an IP, not Ready). Running the pods' processes is :mod:`lorafleet_testbed.raypods`' job."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from lorafleet_testbed.toolchain import tool

if TYPE_CHECKING:
    from lorafleet_testbed.controlplane import ControlPlane

STAGES_FILE: Final = Path(__file__).with_name("kwok-stages.yaml")
NODE_NAME: Final = "lorafleet-node-0"
DEFAULT_CAPACITY: Final = {"cpu": "64", "memory": "256Gi", "pods": "110"}
# Set on every new Node by the TaintNodesByCondition admission plugin; only the node lifecycle
# controller (not run here: it would evict pods of a node without a real kubelet) lifts it.
NOT_READY_TAINT: Final = "node.kubernetes.io/not-ready"


def kwok_argv(kubeconfig: Path, node_name: str, pod_cidr: str, node_ip: str) -> list[str]:
    """KWOK managing only ``node_name``, pod IPs from ``pod_cidr``, no HTTP server of its own
    (nothing here calls a kubelet's API: no logs or exec through the API server)."""
    return [
        str(tool("kwok")),
        f"--kubeconfig={kubeconfig}",
        f"--manage-single-node={node_name}",
        f"--cidr={pod_cidr}",
        f"--node-ip={node_ip}",
        "--server-address=",
        f"--config={STAGES_FILE}",
    ]


def scheduler_argv(kubeconfig: Path) -> list[str]:
    return [
        str(tool("kube-scheduler")),
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--secure-port=0",
    ]


def node_manifest(name: str, capacity: Mapping[str, str]) -> dict[str, Any]:
    """A Node KWOK will manage; status set on create is kept, so the capacity is ours."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
    }


def add_node(
    plane: ControlPlane,
    name: str = NODE_NAME,
    capacity: Mapping[str, str] = DEFAULT_CAPACITY,
    *,
    timeout: float = 60,
) -> None:
    """Create the Node, wait until KWOK reports it Ready, and lift the not-ready taint."""
    plane.kubectl("create", "-f", "-", input_text=json.dumps(node_manifest(name, capacity)))
    deadline = time.monotonic() + timeout
    jsonpath = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
    while plane.kubectl("get", "node", name, "-o", jsonpath).stdout.strip() != "True":
        if time.monotonic() > deadline:
            raise TimeoutError(f"KWOK did not make node {name} Ready within {timeout:.0f} s")
        time.sleep(0.5)
    plane.kubectl("taint", "node", name, f"{NOT_READY_TAINT}:NoSchedule-", check=False)
