"""Names of the objects rendered for a LoRAModel, and the URL clients call."""

from __future__ import annotations

import hashlib
from typing import Final

from lorafleet_api.naming import is_dns1035_label
from lorafleet_operator.constants import MAX_RAYSERVICE_NAME_LENGTH, PORT_SERVE
from lorafleet_operator.errors import InvalidSpecError

_HASH_LENGTH: Final = 8


def rayservice_name(name: str) -> str:
    """The RayService name for a LoRAModel called ``name`` (a DNS-1035 label, <= 63 chars).

    Names that fit KubeRay's limit are kept as they are, so `kubectl get rayservice` reads
    naturally. Longer ones are cut and end in 8 hex digits of the full name's sha256: the
    result stays a DNS-1035 label, is the same on every call, and two long names that share
    a prefix still get different RayServices."""
    if not is_dns1035_label(name):
        raise InvalidSpecError(f"{name!r} is not a DNS-1035 label of at most 63 characters")
    if len(name) <= MAX_RAYSERVICE_NAME_LENGTH:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LENGTH]
    # The prefix starts with the name's leading letter; stripping '-' keeps the label valid.
    prefix = name[: MAX_RAYSERVICE_NAME_LENGTH - _HASH_LENGTH - 1].rstrip("-")
    return f"{prefix}-{digest}"


def endpoint_url(name: str, namespace: str) -> str:
    """The in-cluster OpenAI-compatible base URL: the serve Service is named after the
    LoRAModel (``spec.serveService``), so the URL does not change across Ray cluster
    upgrades."""
    return f"http://{name}.{namespace}.svc:{PORT_SERVE}/v1"
