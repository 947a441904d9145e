"""A replica's disk cache folder on a node shared with other replicas: the folders of replica
processes that are gone (killed, OOM) go when a replica starts; live ones stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lorafleet_runtime.adapters.disk_cache import (
    PARTIAL_PREFIX,
    AdapterDiskCache,
    replica_cache_root,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_new_replica_removes_the_folders_of_gone_replicas_only(tmp_path: Path) -> None:
    parent = tmp_path / "lorafleet-adapters"
    dead, alive = _dead_pid(), os.getppid()
    for pid in (dead, alive):
        # What a killed replica leaves: a verified adapter and a half-written download.
        (parent / f"replica-{pid}" / "a0@0123456789abcdef").mkdir(parents=True)
        (
            parent / f"replica-{pid}" / f"{PARTIAL_PREFIX}x" / "adapter_model.safetensors"
        ).parent.mkdir()
        (
            parent / f"replica-{pid}" / f"{PARTIAL_PREFIX}x" / "adapter_model.safetensors"
        ).write_bytes(b"half")
    (parent / "not-a-replica").mkdir()

    root = replica_cache_root(parent, os.getpid())
    AdapterDiskCache(root)

    assert root == parent / f"replica-{os.getpid()}"
    assert sorted(p.name for p in parent.iterdir()) == sorted(
        [f"replica-{alive}", f"replica-{os.getpid()}", "not-a-replica"]
    )
    assert list(root.iterdir()) == []
