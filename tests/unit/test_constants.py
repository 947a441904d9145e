"""Constants that must stay in step with things outside the operator."""

from __future__ import annotations

import tomllib

from lorafleet_operator.constants import DEFAULT_RUNTIME_IMAGE, RAY_VERSION
from lorafleet_testbed.toolchain import REPO_ROOT


def test_default_runtime_image_is_the_release_of_this_operator() -> None:
    # An operator that deploys another release's runtime would render a contract that the
    # runtime may not accept.
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert DEFAULT_RUNTIME_IMAGE.rsplit(":", 1)[1] == project["version"]


def test_ray_version_is_the_one_the_runtime_is_built_with() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert f"ray[serve,llm]=={RAY_VERSION}" in project["optional-dependencies"]["runtime"]
