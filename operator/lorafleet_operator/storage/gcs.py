"""Adapters in Google Cloud Storage (or fake-gcs-server via STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.cloud import storage as gcs
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from lorafleet_operator.adapters import StoredObject
from lorafleet_operator.errors import (
    AccessDeniedError,
    StorageError,
    StorageNotFoundError,
    StorageUnreachableError,
)
from lorafleet_operator.model.adaptercatalog import StorageLocation
from lorafleet_operator.storage.base import DEFAULT_CONCURRENCY, ThreadedStorage
from lorafleet_operator.storage.credentials import StorageCredentials

# GCS calls retry transient errors on their own (google.api_core retry); a bounded timeout
# keeps one sync from hanging when the endpoint is gone.
_TIMEOUT_SECONDS = 30.0
# The SDK retries connection errors for 120 s by default; a sync should fail sooner and let
# the catalog's own backoff (which keeps the last good index) take over.
_RETRY = DEFAULT_RETRY.with_timeout(15.0)


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
        kwargs: dict[str, Any] = {}
        if endpoint:
            kwargs["client_options"] = ClientOptions(api_endpoint=endpoint)
        if credentials is not None:
            info = credentials.gcs_service_account()
            try:
                from_info: Any = service_account.Credentials.from_service_account_info
                kwargs["credentials"] = from_info(info)
            except (ValueError, KeyError):
                raise AccessDeniedError(
                    f"Secret {credentials.secret_name}: not a service-account key"
                ) from None
            kwargs["project"] = info.get("project_id")
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
        if isinstance(err, api_exceptions.Unauthorized | api_exceptions.Forbidden):
            return AccessDeniedError(f"GCS refused access to {where}: {err.message}")
        if isinstance(err, api_exceptions.NotFound):
            return StorageNotFoundError(f"GCS object or bucket not found at {where}: {err.message}")
        if isinstance(err, api_exceptions.GoogleAPICallError):
            return StorageUnreachableError(f"GCS failed for {where}: {err.message}")
        if isinstance(err, auth_exceptions.RefreshError | auth_exceptions.DefaultCredentialsError):
            return AccessDeniedError(f"GCS credentials rejected for {where}: {err}")
        if isinstance(
            err,
            requests.exceptions.RequestException
            | auth_exceptions.TransportError
            | api_exceptions.RetryError
            | ConnectionError
            | TimeoutError,
        ):
            return StorageUnreachableError(
                f"GCS endpoint unreachable for {where}: {type(err).__name__}"
            )
        return None
