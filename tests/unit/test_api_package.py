"""lorafleet_api is the one place both sides agree on: pure, and the only home of our names."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from lorafleet_testbed.toolchain import REPO_ROOT

SDKS = ("boto3", "botocore", "google", "requests", "kubernetes_asyncio", "ray", "vllm", "kopf")


def test_importing_every_module_of_the_api_loads_no_sdk_no_ray_no_kopf() -> None:
    # import-linter sees imports inside functions too; this checks what an import costs.
    code = (
        "import sys\n"
        "import lorafleet_api, lorafleet_api.contract, lorafleet_api.catalog_index\n"
        "import lorafleet_api.names, lorafleet_api.naming, lorafleet_api.storage\n"
        "import lorafleet_api.storage_sdk\n"
        f"loaded = sorted(m for m in {SDKS!r} if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_the_api_group_is_spelled_once_in_the_shipped_packages() -> None:
    roots = [REPO_ROOT / folder for folder in ("api", "operator", "runtime", "cli", "tools")]
    spelled = [
        str(path.relative_to(REPO_ROOT))
        for root in roots
        for path in sorted(root.rglob("*.py"))
        for line in path.read_text().splitlines()
        if '"lorafleet.dev' in line or "'lorafleet.dev" in line
    ]
    assert spelled == ["api/lorafleet_api/names.py"], spelled


def test_the_runtime_image_copies_only_the_api_and_the_runtime() -> None:
    dockerfile = (REPO_ROOT / "runtime" / "Dockerfile").read_text()
    copied = {
        line.split()[-2].rstrip("/")
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and not line.split()[-2].endswith((".toml", ".md"))
    }
    assert copied == {"api", "runtime"}


def test_the_lorafleet_wheel_does_not_carry_the_test_bed() -> None:
    find = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]
    assert sorted(find["where"]) == ["api", "cli", "operator", "runtime"]
    assert not any(pattern.startswith("lorafleet_testbed") for pattern in find["include"])
    assert (REPO_ROOT / "tools" / "pyproject.toml").exists()  # its own dev package
