"""``python -m lorafleet_testbed up|down|status|demo|tiny-model``: the local control plane
for people (``make cluster-up`` / ``make cluster-down`` / ``make demo``) and the tiny model
``make serve`` stands in for the example's model. Tests use the same classes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lorafleet_testbed import controlplane, process
from lorafleet_testbed.operators import KubeRayOperator, LorafleetOperator
from lorafleet_testbed.toolchain import REPO_ROOT, ToolMissingError, cache_dir

DEMO_NAMESPACE = "lorafleet-demo"
DEMO_MODEL = REPO_ROOT / "examples" / "lora-model.yaml"


def _state_file() -> Path:
    """Where a detached control plane is recorded (LORAFLEET_CLUSTER_DIR overrides)."""
    base = os.environ.get("LORAFLEET_CLUSTER_DIR")
    return (Path(base) if base else cache_dir() / "cluster") / "state.json"


def _running(state: controlplane.ControlPlaneState) -> bool:
    return all(process.pid_alive(pid) for pid in state.pids.values())


def cmd_up(_: argparse.Namespace) -> int:
    state = controlplane.load_state(_state_file())
    if state is not None and _running(state):
        print(f"Control plane already running at {state.server}")
        print(f"KUBECONFIG={state.kubeconfig}")
        return 0
    if state is not None:  # left over from a crash or reboot
        controlplane.stop_detached(state)
    plane = controlplane.ControlPlane.start(detach=True)
    controlplane.save_state(plane.state(), _state_file())
    crds = plane.kubectl("get", "crds", "-o", "name").stdout.split()
    print(f"Started etcd, kube-apiserver and kube-controller-manager at {plane.server}")
    prefix = "customresourcedefinition.apiextensions.k8s.io/"
    names = ", ".join(c.removeprefix(prefix) for c in crds)
    print(f"Installed {len(crds)} CRDs: {names}")
    print(f"Logs and data in {plane.data_dir}")
    print(f"KUBECONFIG={plane.kubeconfig}")
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    state = controlplane.load_state(_state_file())
    if state is None:
        print("No local control plane is running")
        return 0
    controlplane.stop_detached(state)
    _state_file().unlink(missing_ok=True)
    print(f"Stopped the control plane at {state.server} and removed {state.data_dir}")
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    state = controlplane.load_state(_state_file())
    if state is None or not _running(state):
        print("No local control plane is running (make cluster-up starts one)")
        return 1
    print(f"Running at {state.server}; KUBECONFIG={state.kubeconfig}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Control plane + KubeRay + lorafleet operators, then the example LoRAModel applied."""
    if cmd_up(args) != 0:
        return 1
    state = controlplane.load_state(_state_file())
    assert state is not None
    kubeconfig, logs = Path(state.kubeconfig), Path(state.data_dir) / "logs"
    for operator_cls in (KubeRayOperator, LorafleetOperator):
        pid = state.pids.get(operator_cls.name)
        if pid is None or not process.pid_alive(pid):
            operator = operator_cls(kubeconfig, logs, detach=True)
            operator.start()
            assert operator.proc is not None
            state.pids[operator_cls.name] = operator.proc.pid
            print(f"Started {operator_cls.name} (log {operator.log_path})")
    controlplane.save_state(state, _state_file())

    plane = controlplane.ControlPlane(Path(state.data_dir), owns_data_dir=False)
    plane.kubeconfig = kubeconfig
    if plane.kubectl("get", "namespace", DEMO_NAMESPACE, check=False).returncode != 0:
        plane.kubectl("create", "namespace", DEMO_NAMESPACE)
    print(f"+ kubectl apply -n {DEMO_NAMESPACE} -f {DEMO_MODEL.relative_to(REPO_ROOT)}")
    print(plane.kubectl("apply", "-n", DEMO_NAMESPACE, "-f", str(DEMO_MODEL)).stdout.strip())

    def pods() -> list[dict[str, Any]]:
        out = plane.kubectl("get", "pods", "-n", DEMO_NAMESPACE, "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(pods()) < 2:
        time.sleep(1)
    for what in ("loramodels", "rayservices", "rayclusters", "pods,services"):
        print(f"+ kubectl get {what} -n {DEMO_NAMESPACE}")
        print(plane.kubectl("get", what, "-n", DEMO_NAMESPACE).stdout.rstrip())
    model = json.loads(
        plane.kubectl("get", "loramodel", "qwen", "-n", DEMO_NAMESPACE, "-o", "json").stdout
    )
    print("LoRAModel conditions:")
    for cond in model.get("status", {}).get("conditions", []):
        print(f"  {cond['type']}={cond['status']} ({cond['reason']}): {cond['message']}")
    print(
        "\nWhat happened: the lorafleet operator rendered the LoRAModel into a RayService, and\n"
        "the real KubeRay operator turned that into a RayCluster with head and worker pods.\n"
        "The pods stay Pending: this local control plane has no kubelet and no GPU. The\n"
        "catalog named by the example does not exist here, which the status says.\n"
        f"Everything keeps running: KUBECONFIG={kubeconfig}; stop it with: make cluster-down"
    )
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from lorafleet_testbed.tinymodel import build_example_stand_in

    base, catalog = build_example_stand_in(Path(args.directory))
    print(f"tiny model: {base}\nadapter catalog: {catalog}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorafleet_testbed")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start etcd + kube-apiserver + kube-controller-manager")
    sub.add_parser("down", help="stop them and delete their data")
    sub.add_parser("status", help="say whether one is running")
    sub.add_parser("demo", help="up + KubeRay and lorafleet operators + the example LoRAModel")
    tiny = sub.add_parser(
        "tiny-model", help="a tiny model, adapters and a local AdapterCatalog for `make serve`"
    )
    tiny.add_argument("directory")
    args = parser.parse_args(argv)
    handler = {
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "demo": cmd_demo,
        "tiny-model": cmd_tiny_model,
    }[args.command]
    try:
        return handler(args)
    except (ToolMissingError, process.StartupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
