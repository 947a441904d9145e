"""Names of the objects rendered for a LoRAModel, and the URL clients call."""

from __future__ import annotations

import hashlib
from typing import Final

from lorafleet_api.naming import MAX_DNS1035_LABEL_LENGTH, is_dns1035_label
from lorafleet_operator.constants import MAX_RAYSERVICE_NAME_LENGTH, PORT_SERVE
from lorafleet_operator.errors import InvalidSpecError

_HASH_LENGTH: Final = 8
# The ServiceAccount, Role and RoleBinding of a LoRAModel's Ray pods end in this. KubeRay
# names its own autoscaler ServiceAccount, Role and RoleBinding after the RayCluster,
# "<RayService>-<5 random characters>": a last segment of 7 characters never takes that form.
RUNTIME_RBAC_SUFFIX: Final = "-runtime"


def _fit(name: str, limit: int) -> str:
    """``name`` when it has at most ``limit`` characters; else its start and 8 hex digits of
    the full name's sha256, ``limit`` characters in all."""
    if not is_dns1035_label(name):
        raise InvalidSpecError(f"{name!r} is not a DNS-1035 label of at most 63 characters")
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LENGTH]
    # The prefix starts with the name's leading letter; stripping '-' keeps the label valid.
    prefix = name[: limit - _HASH_LENGTH - 1].rstrip("-")
    return f"{prefix}-{digest}"


def rayservice_name(name: str) -> str:
    """The RayService name for a LoRAModel called ``name`` (a DNS-1035 label, <= 63 chars).

    Names that fit KubeRay's limit are kept as they are, so `kubectl get rayservice` reads
    naturally. Longer ones are cut and end in 8 hex digits of the full name's sha256: the
    result stays a DNS-1035 label, is the same on every call, and two long names that share
    a prefix still get different RayServices."""
    return _fit(name, MAX_RAYSERVICE_NAME_LENGTH)


def runtime_rbac_name(name: str) -> str:
    """The name of the ServiceAccount, Role and RoleBinding of the Ray pods of the LoRAModel
    ``name``: ``<name>-runtime``, shortened as :func:`rayservice_name` shortens (same hash)
    when that would exceed 63 characters, so it is a DNS-1035 label for any LoRAModel name.

    It is always longer than the LoRAModel's RayService name, so never equal to it, and never
    one of the names KubeRay gives its autoscaler's objects (see ``RUNTIME_RBAC_SUFFIX``)."""
    limit = MAX_DNS1035_LABEL_LENGTH - len(RUNTIME_RBAC_SUFFIX)
    return _fit(name, limit) + RUNTIME_RBAC_SUFFIX


def endpoint_url(name: str, namespace: str) -> str:
    """The in-cluster OpenAI-compatible base URL: the serve Service is named after the
    LoRAModel (``spec.serveService``), so the URL does not change across Ray cluster
    upgrades."""
    return f"http://{name}.{namespace}.svc:{PORT_SERVE}/v1"
