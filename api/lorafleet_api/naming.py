"""Names as users write them, one rule each for both sides.

- Adapter names: an adapter folder's name in a catalog, which clients send as
  ``<modelId>:<adapter>`` (the seed's convention, also Ray Serve LLM's multiplexed model id)
  and which becomes a path component on every replica's disk. The catalog marks folders
  outside the rule invalid (NameInvalid); the ingress answers 404 for such names without a
  lookup.
- Base models: whether an adapter's ``base_model_name_or_path`` names the model served.
- DNS-1035 labels: Kubernetes names the operator derives Service names from.

Every pattern is matched with ``fullmatch``: ``$`` also matches before a trailing newline, so
``"name\\n"`` would pass a ``match`` with ``^...$``."""

from __future__ import annotations

import re
from typing import Final

MAX_ADAPTER_NAME_LENGTH: Final = 128
_ADAPTER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Anchored as the CRDs spell it (the CRD tests compare the text); always fullmatch-ed.
DNS1035_LABEL: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_DNS1035_LABEL_LENGTH: Final = 63


def invalid_adapter_name_reason(name: str) -> str | None:
    """Why ``name`` cannot be an adapter name, or None when it can."""
    if len(name) > MAX_ADAPTER_NAME_LENGTH:
        return (
            f"the name is {len(name)} characters long; at most {MAX_ADAPTER_NAME_LENGTH} are "
            "allowed"
        )
    if ".." in name:
        return "the name contains '..'"
    if _ADAPTER_NAME.fullmatch(name) is None:
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
        if bad:
            shown = ", ".join(repr(c) for c in bad[:5])
            return f"the name contains {shown}; use letters, digits, '.', '_' and '-'"
        return "the name must start with a letter or digit"
    return None


def is_adapter_name(name: str) -> bool:
    """Whether ``name`` could be an adapter at all (no ``:``, ``/``, ``..``, control chars)."""
    return invalid_adapter_name_reason(name) is None


def adapter_model_id(model_id: str, adapter: str) -> str:
    """The model name clients send for ``adapter`` of the base model ``model_id``."""
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


# Prefixes that name a Hugging Face Hub repository rather than a path.
_HUB_PREFIXES: Final = ("hf://", "https://huggingface.co/", "http://huggingface.co/")


def base_model_key(name: str) -> tuple[bool, str]:
    """``(is_path, key)``: how :func:`same_base_model` compares ``name``.

    Hub ids are case-insensitive (the Hub resolves ``qwen/qwen2.5-0.5b-instruct`` to
    ``Qwen/Qwen2.5-0.5B-Instruct``): the key is the id in lower case, without an ``hf://`` or
    ``https://huggingface.co/`` prefix and without trailing slashes. A local path (starting
    with ``/`` or ``.``) keys as its last component in lower case."""
    spelled = name.strip()
    for prefix in _HUB_PREFIXES:
        if spelled.lower().startswith(prefix):
            spelled = spelled[len(prefix) :]
            break
    else:
        if spelled.startswith(("/", ".")):
            return True, spelled.rstrip("/").rsplit("/", 1)[-1].lower()
    return False, spelled.rstrip("/").lower()


def same_base_model(expected: str, actual: str) -> bool:
    """Whether an adapter trained on ``actual`` fits the base model ``expected``.

    Hub ids match case-insensitively, with or without ``hf://`` and trailing slashes (see
    :func:`base_model_key`). A local path on either side (``/models/Qwen2.5-0.5B``, a mounted
    copy) names the same model as a hub id (``Qwen/Qwen2.5-0.5B``) when the last components
    agree: adapters are usually trained on the hub id and served from a mounted copy. Two hub
    ids of different owners (``Qwen/x`` and ``Other/x``) are different models."""
    if expected == actual:
        return True
    expected_path, expected_key = base_model_key(expected)
    actual_path, actual_key = base_model_key(actual)
    if expected_path or actual_path:
        return expected_key.rsplit("/", 1)[-1] == actual_key.rsplit("/", 1)[-1]
    return expected_key == actual_key


def is_dns1035_label(name: str) -> bool:
    """A DNS-1035 label (Service names): lower-case letters, digits and '-', starting with a
    letter, ending with a letter or digit, at most 63 characters."""
    return len(name) <= MAX_DNS1035_LABEL_LENGTH and DNS1035_LABEL.fullmatch(name) is not None
