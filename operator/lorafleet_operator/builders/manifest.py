"""YAML text of rendered objects, for people: `lorafleet render` output and golden files."""

from __future__ import annotations

from typing import Any

import yaml


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (``serveConfigV2``) as literal blocks, so they read as YAML."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def dump_manifest(obj: Any) -> str:
    """Sorted keys, block style; loading the text gives back ``obj`` exactly."""
    return yaml.dump(obj, Dumper=_ManifestDumper, sort_keys=True, default_flow_style=False)
