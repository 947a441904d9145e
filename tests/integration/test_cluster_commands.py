"""`make cluster-up` / `make cluster-down` (python -m lorafleet_testbed up/down): the control
plane outlives the command, answers on the printed kubeconfig, and `down` leaves nothing
behind. (`make demo` is tested end to end in tests/e2e/test_demo.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lorafleet_testbed import process
from lorafleet_testbed.controlplane import load_state
from lorafleet_testbed.toolchain import tool


def _testbed(command: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LORAFLEET_CLUSTER_DIR=str(state_dir))
    return subprocess.run(
        [sys.executable, "-m", "lorafleet_testbed", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_cluster_up_then_down_leaves_no_process_or_data(tmp_path: Path) -> None:
    up = _testbed("up", tmp_path)
    assert up.returncode == 0, up.stderr
    kubeconfig = next(
        line.split("=", 1)[1] for line in up.stdout.splitlines() if line.startswith("KUBECONFIG=")
    )
    assert "rayservices.ray.io" in up.stdout
    state = load_state(tmp_path / "state.json")
    assert state is not None
    try:
        assert set(state.pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        assert all(process.pid_alive(pid) for pid in state.pids.values())
        ready = subprocess.run(
            [str(tool("kubectl")), f"--kubeconfig={kubeconfig}", "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert ready.stdout.strip() == "ok"
        again = _testbed("up", tmp_path)
        assert "already running" in again.stdout
        assert _testbed("status", tmp_path).returncode == 0

    finally:
        down = _testbed("down", tmp_path)
    assert down.returncode == 0, down.stderr
    assert not any(process.pid_alive(pid) for pid in state.pids.values())
    assert not Path(state.data_dir).exists()
    assert _testbed("status", tmp_path).returncode == 1
