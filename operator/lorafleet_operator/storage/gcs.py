"""Adapters in Google Cloud Storage (or fake-gcs-server via STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import storage as gcs
from google.cloud.storage.retry import DEFAULT_RETRY

from lorafleet_api.storage import (
    ACCESS_DENIED,
    NOT_FOUND,
    CredentialsError,
    StorageCredentials,
)
from lorafleet_api.storage_sdk import gcs_client_kwargs, gcs_error_reason
from lorafleet_operator.adapters import StoredObject
from lorafleet_operator.errors import (
    AccessDeniedError,
    StorageError,
    StorageNotFoundError,
    storage_error,
)
from lorafleet_operator.model.adaptercatalog import StorageLocation
from lorafleet_operator.storage.base import DEFAULT_CONCURRENCY, ThreadedStorage

# GCS calls retry transient errors on their own (google.api_core retry); a bounded timeout
# keeps one sync from hanging when the endpoint is gone.
_TIMEOUT_SECONDS = 30.0
# The SDK retries connection errors for 120 s by default; a sync should fail sooner and let
# the catalog's own backoff (which keeps the last good index) take over.
_RETRY = DEFAULT_RETRY.with_timeout(15.0)
_WHAT = {ACCESS_DENIED: "GCS refused access to", NOT_FOUND: "GCS object or bucket not found at"}
_UNREACHABLE = "GCS failed or unreachable for"


class GcsStorage(ThreadedStorage):
    def __init__(
        self,
        location: StorageLocation,
        *,
        endpoint: str | None = None,
        credentials: StorageCredentials | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        super().__init__(
            location,
            concurrency=concurrency,
            secrets=credentials.secret_values() if credentials else (),
        )
        try:
            kwargs: dict[str, Any] = gcs_client_kwargs(endpoint, credentials)
        except CredentialsError as err:
            raise storage_error(err.reason, str(err)) from None
        # Client() itself may look up default credentials (ADC, Workload Identity).
        try:
            self._client = gcs.Client(**kwargs)
        except auth_exceptions.DefaultCredentialsError as err:
            raise AccessDeniedError(f"no GCS credentials found: {self.scrub(str(err))}") from None
        self._endpoint = endpoint

    def describe(self) -> str:
        where = f" at {self._endpoint}" if self._endpoint else ""
        return f"{self.location.uri}{where}"

    def _list_blocking(self) -> list[StoredObject]:
        prefix = self.location.prefix
        bucket = self._client.bucket(self.location.bucket)
        if not bucket.exists(timeout=_TIMEOUT_SECONDS, retry=_RETRY):
            raise StorageNotFoundError(f"GCS bucket {self.location.bucket} does not exist")
        objects = []
        # list_blobs pages through nextPageToken itself.
        for blob in self._client.list_blobs(
            self.location.bucket, prefix=prefix, timeout=_TIMEOUT_SECONDS, retry=_RETRY
        ):
            objects.append(
                StoredObject(
                    key=str(blob.name)[len(prefix) :],
                    size=int(blob.size or 0),
                    token=str(blob.generation or blob.etag or ""),
                )
            )
        return objects

    def _read_blocking(self, key: str, max_bytes: int) -> bytes:
        blob = self._client.bucket(self.location.bucket).blob(self.location.prefix + key)
        return bytes(
            blob.download_as_bytes(start=0, end=max_bytes, timeout=_TIMEOUT_SECONDS, retry=_RETRY)
        )

    def _classify(self, err: Exception) -> StorageError | None:
        where = self.describe()
        reason = gcs_error_reason(err)
        if reason is None:
            return None
        if isinstance(err, api_exceptions.GoogleAPICallError):
            detail = str(err.message)
        elif isinstance(err, auth_exceptions.GoogleAuthError):
            detail = str(err)
        else:
            detail = type(err).__name__
        return storage_error(reason, f"{_WHAT.get(reason, _UNREACHABLE)} {where}: {detail}")
