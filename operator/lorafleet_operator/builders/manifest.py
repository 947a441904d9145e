"""Pieces every rendered object shares (owner references, labels, the spec-hash annotation),
and the YAML text of rendered objects for people: `lorafleet render` output and golden
files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

from lorafleet_api.names import (
    ANNOTATION_SPEC_HASH,
    API_GROUP_VERSION,
    APP_NAME,
    FIELD_MANAGER,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_LORAMODEL,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LORAMODEL_KIND,
)
from lorafleet_operator.constants import COMPONENT_LLM_SERVER


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


def standard_labels(name: str) -> dict[str, str]:
    """Labels on every object rendered for the LoRAModel ``name``."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: name,
        LABEL_COMPONENT: COMPONENT_LLM_SERVER,
        LABEL_PART_OF: APP_NAME,
        LABEL_MANAGED_BY: FIELD_MANAGER,
        LABEL_LORAMODEL: name,
    }


def loramodel_object_metadata(
    name: str, loramodel: str, namespace: str, uid: str | None, *, block_owner_deletion: bool
) -> dict[str, Any]:
    """Metadata of an object rendered for the LoRAModel ``loramodel``: its labels and, when
    the LoRAModel came from the API server (it has a ``uid``), the controller reference that
    garbage-collects the object with it (``lorafleet render`` output has none)."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": standard_labels(loramodel),
    }
    if uid:
        metadata["ownerReferences"] = [
            owner_reference(
                LORAMODEL_KIND, loramodel, uid, block_owner_deletion=block_owner_deletion
            )
        ]
    return metadata


def desired_state_hash(obj: Mapping[str, Any]) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace): independent of dict order."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def with_spec_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with the ``spec-hash`` annotation of everything else in it (set last, so the
    hash covers the whole rendered object). The reconciler applies an object only when this
    differs from the live one's: never a diff against the live object, which carries the API
    server's defaults."""
    obj["metadata"]["annotations"] = {ANNOTATION_SPEC_HASH: desired_state_hash(obj)}
    return obj
