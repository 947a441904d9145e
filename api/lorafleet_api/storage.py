"""What the operator's catalog scan and the runtime's adapter download share about storage:
what an SDK failure means (the reason a user sees), how the Secret named by an
AdapterCatalog's ``source.credentialsSecretRef`` is decoded and becomes SDK credentials, and
how an SDK client is set up for a catalog (endpoint, region, credentials).

Pure: the SDK-bound parts (classifying google exceptions, building a GCS client's
arguments) are in ``lorafleet_api.storage_sdk``, which imports each SDK inside the function
that needs it (one scheme's SDK per catalog)."""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

# The reasons (status conditions in the operator, error types in HTTP 503 bodies).
NOT_FOUND: Final = "NotFound"
ACCESS_DENIED: Final = "AccessDenied"
UNREACHABLE: Final = "StorageUnreachable"
# The runtime found a catalog's index but not the AdapterCatalog that says how to reach its
# storage (deleted, or not readable as the API version it asks for).
CATALOG_UNAVAILABLE: Final = "CatalogUnavailable"

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


def os_error_reason(err: BaseException) -> str | None:
    """The reason an OSError from a mounted volume means; None for anything else."""
    if isinstance(err, FileNotFoundError):
        return NOT_FOUND
    if isinstance(err, PermissionError):
        return ACCESS_DENIED
    if isinstance(err, OSError):
        return UNREACHABLE
    return None


class LinkRefusedError(PermissionError):
    """A path in a mounted folder goes through a symbolic link (or names something that is not
    a regular file): refused like a permission problem (AccessDenied), never followed."""


def open_below(root: Path, relative: str) -> IO[bytes]:
    """Open the regular file ``relative`` (``/``-separated) below ``root`` for reading,
    following no symbolic link below ``root`` (each component is opened relative to its
    parent with ``O_NOFOLLOW``, so a link swapped in after a check is refused too). ``root``
    itself may sit behind links. LinkRefusedError for a link, ``..``, or a FIFO/device (a FIFO
    would block the reader forever); other OSErrors as the OS raises them."""
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise LinkRefusedError(f"{relative!r} is not a plain path below the folder")
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=folder)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LinkRefusedError(
                        f"{relative}: {part} is a symbolic link or not a folder (not followed)"
                    ) from None
                raise
            os.close(folder)
            folder = inner
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; cleared below.
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | nofollow, dir_fd=folder)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise LinkRefusedError(f"{relative} is a symbolic link (not followed)") from None
            raise
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LinkRefusedError(f"{relative} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class CredentialsError(ValueError):
    """The credentials Secret cannot be used for this scheme (reason AccessDenied); the
    message names the Secret and the keys, never a value."""

    reason: Final = ACCESS_DENIED


@dataclass(frozen=True)
class StorageCredentials:
    """Decoded data of a credentials Secret; ``secret_name`` is for messages only. Values
    never appear in ``repr``; ``secret_values`` lists what messages must be scrubbed of.
    ``binary_keys`` are keys whose value is not UTF-8 text (no credential we read is binary:
    they are left out of ``data``, and a message names them when one is needed)."""

    secret_name: str
    data: Mapping[str, str] = field(repr=False)
    binary_keys: frozenset[str] = frozenset()

    @classmethod
    def from_secret_data(
        cls, secret_name: str, data: Mapping[str, str] | None
    ) -> StorageCredentials:
        """The credentials in a Secret's ``data`` as the API returns it (base64 values).

        A key that is not text does not spoil the others: a Secret may hold more than what
        the catalog needs (a CA bundle, a binary key for another tool)."""
        decoded: dict[str, str] = {}
        binary: set[str] = set()
        for key, value in (data or {}).items():
            try:
                decoded[key] = base64.b64decode(value).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                binary.add(key)
        return cls(secret_name=secret_name, data=decoded, binary_keys=frozenset(binary))

    def _missing(self, keys: tuple[str, ...], scheme: str) -> CredentialsError:
        binary = [key for key in keys if key in self.binary_keys]
        if binary:
            return CredentialsError(
                f"Secret {self.secret_name}: {', '.join(binary)} is not UTF-8 text"
            )
        return CredentialsError(
            f"Secret {self.secret_name} needs the key{'s' if len(keys) > 1 else ''} "
            f"{' and '.join(keys)} for a {scheme}:// source"
        )

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
            raise self._missing((S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY), "s3")
        keys = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        token = self.data.get(S3_SESSION_TOKEN)
        if token:
            keys["aws_session_token"] = token
        return keys

    def gcs_service_account(self) -> dict[str, Any]:
        """The service-account key as a dict."""
        raw = self.data.get(GCS_SERVICE_ACCOUNT)
        if not raw:
            raise self._missing((GCS_SERVICE_ACCOUNT,), "gs")
        try:
            info = json.loads(raw)
        except ValueError:
            raise CredentialsError(
                f"Secret {self.secret_name}: {GCS_SERVICE_ACCOUNT} is not JSON"
            ) from None
        if not isinstance(info, dict):
            raise CredentialsError(f"Secret {self.secret_name}: {GCS_SERVICE_ACCOUNT} is not a key")
        return info
