"""Where ``make tools`` put the pinned binaries, and the pins themselves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "tools" / "versions.env"


class ToolMissingError(RuntimeError):
    """A pinned tool has not been built yet."""


def cache_dir() -> Path:
    """The cache directory shared with tools/build-tools.sh (outside git)."""
    explicit = os.environ.get("LORAFLEET_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "lorafleet"


def bin_dir() -> Path:
    return cache_dir() / "bin"


def tool(name: str) -> Path:
    """Absolute path of a pinned tool; a clear error when it was never built."""
    path = bin_dir() / name
    if path.exists():
        return path
    raise ToolMissingError(f"{name} is not built: run `make tools` (builds into {bin_dir()})")


def pinned_versions() -> dict[str, str]:
    """The KEY=value pins of tools/versions.env."""
    pins: dict[str, str] = {}
    if not VERSIONS_FILE.exists():
        return pins
    for raw in VERSIONS_FILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        pins[key.strip()] = value.strip()
    return pins


def which(name: str) -> str | None:
    """A tool from the cache first, then PATH."""
    try:
        return str(tool(name))
    except ToolMissingError:
        return shutil.which(name)
