"""Credentials from an AdapterCatalog's ``source.credentialsSecretRef``.

Absent a Secret, each SDK uses its standard chain (IRSA / instance profile / env for S3,
Workload Identity / ADC for GCS). The class is shared with the runtime (which reads the same
Secret to download adapters): see lorafleet_runtime.storage_common. Its values never appear in
``repr`` and are handed to :func:`~lorafleet_operator.storage.scrub.scrub` with every error."""

from __future__ import annotations

from lorafleet_runtime.storage_common import (
    GCS_SERVICE_ACCOUNT,
    S3_ACCESS_KEY_ID,
    S3_SECRET_ACCESS_KEY,
    S3_SESSION_TOKEN,
    CredentialsError,
    StorageCredentials,
)

__all__ = [
    "GCS_SERVICE_ACCOUNT",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "S3_SESSION_TOKEN",
    "CredentialsError",
    "StorageCredentials",
]
