"""Model names as clients send them: ``<modelId>`` for the base model, ``<modelId>:<adapter>``
for one adapter (the seed's convention, also Ray Serve LLM's multiplexed model id)."""

from __future__ import annotations

import re
from typing import Final

# The catalog refuses adapter folder names outside this shape (issue 4), so anything else can
# be answered "not found" without a lookup. Bounded length keeps per-name state small.
MAX_ADAPTER_NAME_LENGTH: Final = 128
_ADAPTER_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def adapter_model_id(model_id: str, adapter: str) -> str:
    return f"{model_id}:{adapter}"


def split_model(model: str, model_id: str) -> tuple[bool, str | None]:
    """``(is_ours, adapter)``: whether ``model`` names our base model or one of its adapters,
    and the adapter name (None for the base model)."""
    if model == model_id:
        return True, None
    prefix = model_id + ":"
    if not model.startswith(prefix):
        return False, None
    return True, model[len(prefix) :]


def plausible_adapter_name(name: str) -> bool:
    """Whether ``name`` could be an adapter at all (no ``:``, ``/``, ``..``, control chars)."""
    return (
        0 < len(name) <= MAX_ADAPTER_NAME_LENGTH
        and _ADAPTER_NAME.match(name) is not None
        and ".." not in name
    )
