"""What the operator's catalog scan and the runtime's adapter download share about storage:
what an SDK failure means (the reason a user sees), and how the Secret named by an
AdapterCatalog's ``source.credentialsSecretRef`` becomes SDK credentials.

Both sides import this module, so it stays free of Ray and of the operator; SDK modules are
imported inside the functions that need them (one scheme's SDK per catalog)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

# The reasons (status conditions in the operator, error types in HTTP 503 bodies).
NOT_FOUND: Final = "NotFound"
ACCESS_DENIED: Final = "AccessDenied"
UNREACHABLE: Final = "StorageUnreachable"

S3_ACCESS_DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "403",
    }
)
S3_NOT_FOUND_CODES: Final = frozenset({"NoSuchBucket", "NoSuchKey", "NotFound", "404"})

# The keys of a credentials Secret.
S3_ACCESS_KEY_ID: Final = "AWS_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY: Final = "AWS_SECRET_ACCESS_KEY"  # noqa: S105  (a key name)
S3_SESSION_TOKEN: Final = "AWS_SESSION_TOKEN"  # noqa: S105  (a key name)
GCS_SERVICE_ACCOUNT: Final = "service-account.json"


def s3_code_reason(code: str) -> str:
    """The reason an S3 error ``Code`` (or bare HTTP status) means."""
    if code in S3_NOT_FOUND_CODES:
        return NOT_FOUND
    if code in S3_ACCESS_DENIED_CODES:
        return ACCESS_DENIED
    return UNREACHABLE


def gcs_error_reason(err: BaseException) -> str | None:
    """The reason a google-cloud-storage / google-auth exception means; None for a bug."""
    import requests
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(err, api_exceptions.Unauthorized | api_exceptions.Forbidden):
        return ACCESS_DENIED
    if isinstance(err, api_exceptions.NotFound):
        return NOT_FOUND
    if isinstance(err, auth_exceptions.RefreshError | auth_exceptions.DefaultCredentialsError):
        return ACCESS_DENIED
    if isinstance(
        err,
        api_exceptions.GoogleAPIError
        | requests.exceptions.RequestException
        | auth_exceptions.TransportError
        | OSError,  # connection resets and timeouts while a blob streams
    ):
        return UNREACHABLE
    return None


def os_error_reason(err: BaseException) -> str | None:
    """The reason an OSError from a mounted volume means; None for anything else."""
    if isinstance(err, FileNotFoundError):
        return NOT_FOUND
    if isinstance(err, PermissionError):
        return ACCESS_DENIED
    if isinstance(err, OSError):
        return UNREACHABLE
    return None


class CredentialsError(ValueError):
    """The credentials Secret cannot be used for this scheme (reason AccessDenied); the
    message names the Secret and the keys, never a value."""

    reason: Final = ACCESS_DENIED


@dataclass(frozen=True)
class StorageCredentials:
    """Decoded data of a credentials Secret; ``secret_name`` is for messages only. Values
    never appear in ``repr``; ``secret_values`` lists what messages must be scrubbed of."""

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

    def fingerprint(self) -> str:
        """Changes when any value changes (to tell a rotated Secret apart); reveals none."""
        digest = hashlib.sha256()
        for key in sorted(self.data):
            digest.update(f"{key}\0{self.data[key]}\0".encode())
        return digest.hexdigest()[:16]

    def s3_keys(self) -> dict[str, str]:
        """boto3 session/client keyword arguments."""
        key_id = self.data.get(S3_ACCESS_KEY_ID)
        secret = self.data.get(S3_SECRET_ACCESS_KEY)
        if not key_id or not secret:
            raise CredentialsError(
                f"Secret {self.secret_name} needs the keys {S3_ACCESS_KEY_ID} and "
                f"{S3_SECRET_ACCESS_KEY} for an s3:// source"
            )
        keys = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        token = self.data.get(S3_SESSION_TOKEN)
        if token:
            keys["aws_session_token"] = token
        return keys

    def gcs_service_account(self) -> dict[str, Any]:
        """The service-account key as a dict."""
        raw = self.data.get(GCS_SERVICE_ACCOUNT)
        if not raw:
            raise CredentialsError(
                f"Secret {self.secret_name} needs the key {GCS_SERVICE_ACCOUNT} for a gs:// source"
            )
        try:
            info = json.loads(raw)
        except ValueError:
            raise CredentialsError(
                f"Secret {self.secret_name}: {GCS_SERVICE_ACCOUNT} is not JSON"
            ) from None
        if not isinstance(info, dict):
            raise CredentialsError(f"Secret {self.secret_name}: {GCS_SERVICE_ACCOUNT} is not a key")
        return info

    def gcs_client_kwargs(self) -> dict[str, Any]:
        """``google.cloud.storage.Client`` keyword arguments: credentials and project."""
        from google.oauth2 import service_account

        info = self.gcs_service_account()
        try:
            from_info: Any = service_account.Credentials.from_service_account_info
            credentials = from_info(info)
        except (ValueError, KeyError):
            raise CredentialsError(
                f"Secret {self.secret_name}: not a service-account key"
            ) from None
        return {"credentials": credentials, "project": info.get("project_id")}
