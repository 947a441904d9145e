"""Credentials from an AdapterCatalog's ``source.credentialsSecretRef``.

Absent a Secret, each SDK uses its standard chain (IRSA / instance profile / env for S3,
Workload Identity / ADC for GCS). The values never appear in ``repr`` and are handed to
:func:`~lorafleet_operator.storage.scrub.scrub` with every error message."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from lorafleet_operator.errors import AccessDeniedError

S3_ACCESS_KEY_ID: Final = "AWS_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY: Final = "AWS_SECRET_ACCESS_KEY"  # noqa: S105  (a key name)
S3_SESSION_TOKEN: Final = "AWS_SESSION_TOKEN"  # noqa: S105  (a key name)
GCS_SERVICE_ACCOUNT: Final = "service-account.json"


@dataclass(frozen=True)
class StorageCredentials:
    """Decoded Secret data; ``secret_name`` is for messages only."""

    secret_name: str
    data: Mapping[str, str] = field(repr=False)

    def secret_values(self) -> list[str]:
        """Everything that must never be printed (every value, and the parts of a JSON key)."""
        values = [v for v in self.data.values() if v]
        raw = self.data.get(GCS_SERVICE_ACCOUNT)
        if raw:
            try:
                info = json.loads(raw)
            except ValueError:
                info = {}
            if isinstance(info, dict):
                values += [str(info[k]) for k in ("private_key", "private_key_id") if k in info]
        return values

    def s3_keys(self) -> dict[str, str]:
        """boto3 client keyword arguments; AccessDenied when the Secret lacks the keys."""
        key_id = self.data.get(S3_ACCESS_KEY_ID)
        secret = self.data.get(S3_SECRET_ACCESS_KEY)
        if not key_id or not secret:
            raise AccessDeniedError(
                f"Secret {self.secret_name} needs the keys {S3_ACCESS_KEY_ID} and "
                f"{S3_SECRET_ACCESS_KEY} for an s3:// source"
            )
        keys = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        token = self.data.get(S3_SESSION_TOKEN)
        if token:
            keys["aws_session_token"] = token
        return keys

    def gcs_service_account(self) -> dict[str, Any]:
        raw = self.data.get(GCS_SERVICE_ACCOUNT)
        if not raw:
            raise AccessDeniedError(
                f"Secret {self.secret_name} needs the key {GCS_SERVICE_ACCOUNT} for a gs:// source"
            )
        try:
            info = json.loads(raw)
        except ValueError as err:
            raise AccessDeniedError(
                f"Secret {self.secret_name}: {GCS_SERVICE_ACCOUNT} is not JSON"
            ) from err
        if not isinstance(info, dict):
            raise AccessDeniedError(
                f"Secret {self.secret_name}: {GCS_SERVICE_ACCOUNT} is not a key"
            )
        return info
