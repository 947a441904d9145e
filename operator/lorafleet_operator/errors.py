"""Errors the pure core raises and the handlers translate.

No kopf import here: builders and status code raise these, and only ``handlers/`` turns them
into kopf's PermanentError / TemporaryError (plus a condition with the same reason)."""

from __future__ import annotations

from lorafleet_api.storage import ACCESS_DENIED, NOT_FOUND


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


class StorageError(LorafleetError):
    """Listing or reading an adapter source failed. Subclasses name why; the message is
    already scrubbed of credentials (see ``storage.scrub``), so it may go into status."""

    default_reason = "StorageError"


class StorageUnreachableError(StorageError):
    """The endpoint did not answer, timed out, or asked us to slow down: retry with backoff."""

    default_reason = "StorageUnreachable"


class AccessDeniedError(StorageError):
    """Credentials are missing, wrong or lack permission: retrying helps once they are fixed."""

    default_reason = "AccessDenied"


class StorageNotFoundError(StorageError):
    """The bucket, prefix or directory does not exist."""

    default_reason = "NotFound"


def storage_error(reason: str, message: str) -> StorageError:
    """The StorageError subclass for a reason of ``lorafleet_api.storage`` (what an SDK failure
    means); anything but NotFound and AccessDenied is retried as StorageUnreachable."""
    if reason == NOT_FOUND:
        return StorageNotFoundError(message)
    if reason == ACCESS_DENIED:
        return AccessDeniedError(message)
    return StorageUnreachableError(message)
