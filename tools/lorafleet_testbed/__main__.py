"""``python -m lorafleet_testbed COMMAND`` (up, down, status, demo, demo-down, demo-upload,
demo-remove, tiny-model): the local control plane for people (``make cluster-up`` /
``make cluster-down``), the demo (``make demo`` / ``make demo-down``,
:mod:`lorafleet_testbed.demo`) and the tiny model ``make serve`` stands in for the example's
model. Tests use the same classes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lorafleet_testbed import controlplane, process
from lorafleet_testbed.toolchain import ToolMissingError, cache_dir


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


def cmd_demo(_: argparse.Namespace) -> int:
    from lorafleet_testbed import demo

    return demo.up()


def cmd_demo_down(_: argparse.Namespace) -> int:
    from lorafleet_testbed import demo

    return demo.down()


def cmd_demo_upload(args: argparse.Namespace) -> int:
    from lorafleet_testbed import demo

    return demo.upload(args.adapter, args.target)


def cmd_demo_remove(args: argparse.Namespace) -> int:
    from lorafleet_testbed import demo

    return demo.remove(args.adapter)


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
    sub.add_parser(
        "demo", help="helm install, kubectl apply examples/demo, KubeRay Serve hop, OpenAI calls"
    )
    sub.add_parser("demo-down", help="stop everything make demo started")
    upload = sub.add_parser("demo-upload", help="publish one of the demo's adapters to its bucket")
    upload.add_argument("adapter")
    upload.add_argument(
        "--as",
        dest="target",
        metavar="NAME",
        help="publish it under this name: a new adapter, or a new revision of an existing one",
    )
    remove = sub.add_parser("demo-remove", help="delete an adapter from the demo's bucket")
    remove.add_argument("adapter")
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
        "demo-down": cmd_demo_down,
        "demo-upload": cmd_demo_upload,
        "demo-remove": cmd_demo_remove,
        "tiny-model": cmd_tiny_model,
    }[args.command]
    try:
        return handler(args)
    except (ToolMissingError, process.StartupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
