"""Unit-test fixtures: golden files and the CRD schemas the rendered objects must satisfy.

Rewrite golden files after an intended change with

    .venv/bin/pytest -m unit --update-golden

and review the diff like code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lorafleet_testbed.toolchain import REPO_ROOT

RAYSERVICE_CRD = REPO_ROOT / "tools" / "kuberay" / "crd" / "ray.io_rayservices.yaml"
LORAMODEL_CRD = REPO_ROOT / "crds" / "lorafleet.dev_loramodels.yaml"
GOLDEN_DIR = Path(__file__).parent / "golden"


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def _version_schema(crd_path: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(crd_path.read_text())
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    raise LookupError(f"{crd_path.name} has no version {version}")


@pytest.fixture(scope="session")
def rayservice_schema() -> dict[str, Any]:
    """KubeRay v1.7.0's RayService ray.io/v1 openAPIV3Schema."""
    return _version_schema(RAYSERVICE_CRD, "v1")


@pytest.fixture(scope="session")
def loramodel_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(LORAMODEL_CRD.read_text())
    return crd


@pytest.fixture(scope="session")
def loramodel_schema() -> dict[str, Any]:
    return _version_schema(LORAMODEL_CRD, "v1alpha1")
