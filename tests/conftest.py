"""Shared fixtures. One control plane and one set of storage servers per test session:
starting them costs seconds, and the suite must fit 2 cores."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.storage import FakeGcsServer, MinioServer

TESTS = Path(__file__).parent
LAYERS = ("unit", "integration", "e2e", "runtime", "gpu")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/unit/golden/ from the current output instead of comparing",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test gets the marker of the folder it lives in (tests/unit -> unit, ...)."""
    for item in items:
        layer = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))
        if layer == "gpu" and not _gpu_present():
            item.add_marker(
                pytest.mark.skip(
                    reason="needs an NVIDIA GPU: no /dev/nvidia0 and no nvidia-smi on this machine"
                )
            )


def _gpu_present() -> bool:
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """Real etcd + kube-apiserver + kube-controller-manager with KubeRay's and our CRDs."""
    with ControlPlane.start() as plane:
        yield plane


@pytest.fixture(scope="session")
def minio() -> Iterator[MinioServer]:
    server = MinioServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def gcs() -> Iterator[FakeGcsServer]:
    server = FakeGcsServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
