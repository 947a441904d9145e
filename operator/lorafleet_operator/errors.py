"""Errors the pure core raises and the handlers translate.

No kopf import here: builders and status code raise these, and only ``handlers/`` turns them
into kopf's PermanentError / TemporaryError (plus a condition with the same reason)."""

from __future__ import annotations


class LorafleetError(Exception):
    """Base class. ``reason`` is one CamelCase word, usable as a condition reason."""

    default_reason = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidSpecError(LorafleetError):
    """The spec can never be rendered as written: retrying does not help, the user must edit it."""

    default_reason = "InvalidSpec"


class DependencyMissingError(LorafleetError):
    """Something the object refers to does not exist yet (e.g. an AdapterCatalog): retry later."""

    default_reason = "DependencyMissing"
