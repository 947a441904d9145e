"""The toolchain pins agree with the build script and with the KubeRay reference data."""

from __future__ import annotations

import re
import subprocess
import sys

from lorafleet_testbed.toolchain import REPO_ROOT, pinned_versions

BUILD_SCRIPT = REPO_ROOT / "tools" / "build-tools.sh"


def test_every_version_the_build_script_reads_is_pinned() -> None:
    used = set(re.findall(r"\$\{?([A-Z_]+_VERSION)\b", BUILD_SCRIPT.read_text()))
    pins = pinned_versions()
    assert used, "the build script reads no pins"
    assert used <= set(pins), f"unpinned: {sorted(used - set(pins))}"
    assert all(re.fullmatch(r"v\d+\.\d+\.\d+(-[0-9a-f.-]+)?", pins[k]) for k in used)


def test_kuberay_crd_pin_matches_the_vendored_crds() -> None:
    source = (REPO_ROOT / "tools" / "kuberay" / "SOURCE.md").read_text()
    tag = re.search(r"Tag: `(v[\d.]+)`", source)
    assert tag is not None
    pins = pinned_versions()
    assert pins["KUBERAY_CRD_VERSION"] == tag.group(1)
    # The operator binary may lag the CRDs (see versions.env) but never lead them.
    assert _semver(pins["KUBERAY_VERSION"]) <= _semver(pins["KUBERAY_CRD_VERSION"])


def _semver(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("."))


def test_unknown_tool_is_refused_with_the_list_of_known_ones() -> None:
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "kubelet"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "unknown tool: kubelet" in result.stderr
    assert "kubernetes" in result.stderr


def test_lorafleet_version_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lorafleet_cli.main", "version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.match(r"lorafleet \d+\.\d+\.\d+", result.stdout)
