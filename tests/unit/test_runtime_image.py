"""The operator's default runtime image is what runtime/Dockerfile builds: the same name,
the package's version, and an official Ray LLM base image of the Ray version we pin."""

from __future__ import annotations

import re
from pathlib import Path

from lorafleet_operator import __version__
from lorafleet_operator.constants import DEFAULT_RUNTIME_IMAGE, RAY_VERSION

DOCKERFILE = Path(__file__).parents[2] / "runtime" / "Dockerfile"


def test_default_image_is_the_runtime_image_of_this_version() -> None:
    repository, tag = DEFAULT_RUNTIME_IMAGE.rsplit(":", 1)
    assert tag == __version__
    assert f"{repository}:<lorafleet version>" in DOCKERFILE.read_text()


def test_dockerfile_builds_on_the_official_ray_llm_image_of_our_ray() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG RAY_LLM_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None
    assert base.group(1).startswith(f"rayproject/ray-llm:{RAY_VERSION}-")
    assert '"/home/ray/lorafleet[runtime]"' in text
