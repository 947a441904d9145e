"""Pieces every rendered object shares (owner references), and the YAML text of rendered
objects for people: `lorafleet render` output and golden files."""

from __future__ import annotations

from typing import Any

import yaml

from lorafleet_api.names import API_GROUP_VERSION


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (``serveConfigV2``) as literal blocks, so they read as YAML."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def dump_manifest(obj: Any) -> str:
    """Sorted keys, block style; loading the text gives back ``obj`` exactly."""
    return yaml.dump(obj, Dumper=_ManifestDumper, sort_keys=True, default_flow_style=False)


def owner_reference(
    kind: str, name: str, uid: str, *, block_owner_deletion: bool
) -> dict[str, Any]:
    """The controller reference to one of our objects (``kind`` in our API group): deleting
    the owner garbage-collects what it owns."""
    return {
        "apiVersion": API_GROUP_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": block_owner_deletion,
    }
