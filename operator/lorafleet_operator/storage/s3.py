"""Adapters in S3 or an S3-compatible server (MinIO, Ceph), through boto3."""

from __future__ import annotations

from typing import Any, Final

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from lorafleet_operator.adapters import StoredObject
from lorafleet_operator.errors import (
    AccessDeniedError,
    StorageError,
    StorageNotFoundError,
    StorageUnreachableError,
)
from lorafleet_operator.model.adaptercatalog import StorageLocation
from lorafleet_operator.storage.base import DEFAULT_CONCURRENCY, AdapterStorage
from lorafleet_operator.storage.credentials import StorageCredentials

_ACCESS_DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "403",
        "401",
    }
)
_NOT_FOUND_CODES: Final = frozenset({"NoSuchBucket", "NoSuchKey", "404", "NotFound"})
# The default region when an S3-compatible endpoint is named without one (MinIO's default).
_ENDPOINT_DEFAULT_REGION: Final = "us-east-1"


class S3Storage(AdapterStorage):
    def __init__(
        self,
        location: StorageLocation,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        credentials: StorageCredentials | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        super().__init__(
            location,
            concurrency=concurrency,
            secrets=credentials.secret_values() if credentials else (),
        )
        keys = credentials.s3_keys() if credentials else {}
        config = Config(
            # botocore retries throttling and 5xx itself; we keep it short because the sync
            # loop retries the whole sync with its own backoff and keeps the last good index.
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=concurrency,
            s3={"addressing_style": "path"} if endpoint else None,
        )
        # A session per storage: boto3's default session is shared process state.
        session = boto3.session.Session()
        self._client: Any = session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region or (_ENDPOINT_DEFAULT_REGION if endpoint else None),
            config=config,
            **keys,
        )
        self._endpoint = endpoint

    def describe(self) -> str:
        where = f" at {self._endpoint}" if self._endpoint else ""
        return f"{self.location.uri}{where}"

    def _list_blocking(self) -> list[StoredObject]:
        prefix = self.location.prefix
        paginator = self._client.get_paginator("list_objects_v2")
        objects = []
        # The paginator follows ContinuationToken: S3 returns at most 1,000 keys per page.
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
            for entry in page.get("Contents", ()):
                objects.append(
                    StoredObject(
                        key=entry["Key"][len(prefix) :],
                        size=int(entry.get("Size", 0)),
                        token=str(entry.get("ETag", "")).strip('"'),
                    )
                )
        return objects

    def _read_blocking(self, key: str, max_bytes: int) -> bytes:
        response = self._client.get_object(
            Bucket=self.location.bucket,
            Key=self.location.prefix + key,
            Range=f"bytes=0-{max_bytes}",
        )
        body = response["Body"]
        try:
            return bytes(body.read(max_bytes + 1))
        finally:
            body.close()

    def _classify(self, err: Exception) -> StorageError | None:
        where = self.describe()
        if isinstance(err, NoCredentialsError | PartialCredentialsError):
            return AccessDeniedError(f"no S3 credentials found for {where}: {err}")
        if isinstance(err, ClientError):
            error = err.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            detail = error.get("Message") or code
            if code in _ACCESS_DENIED_CODES or status in (401, 403):
                return AccessDeniedError(f"S3 refused access to {where}: {code}: {detail}")
            if code in _NOT_FOUND_CODES or status == 404:
                what = "bucket" if code == "NoSuchBucket" else "object"
                return StorageNotFoundError(f"S3 {what} not found at {where}: {code}: {detail}")
            return StorageUnreachableError(
                f"S3 failed for {where}: {code} (HTTP {status}): {detail}"
            )
        if isinstance(err, BotoCoreError):
            return StorageUnreachableError(f"S3 endpoint unreachable for {where}: {err}")
        return None
