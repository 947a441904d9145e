"""Status writes shared by the reconcilers: once per reconcile, and only when it changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lorafleet_api import names
from lorafleet_operator.k8s.client import JsonObj, KubeClient


async def write_status(
    kube: KubeClient,
    namespace: str,
    name: str,
    previous: Mapping[str, Any],
    status: Mapping[str, Any],
    *,
    plural: str = names.LORAMODEL_PLURAL,
) -> bool:
    """Merge-patch status only when it changed; keys that went away are deleted."""
    if dict(previous) == dict(status):
        return False
    patch: JsonObj = dict(status)
    for key in previous:
        if key not in status:
            patch[key] = None
    await kube.patch_status(
        names.API_GROUP,
        names.API_VERSION,
        plural,
        namespace,
        name,
        patch,
    )
    return True
