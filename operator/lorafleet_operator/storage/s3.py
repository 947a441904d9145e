"""Adapters in S3 or an S3-compatible server (MinIO, Ceph).

boto3 resolves credentials (Secret keys, IRSA, instance profile, environment), endpoint,
region and addressing style; botocore's SigV4 signer signs every request as a presigned URL;
aiohttp sends them. Why not plain boto3 calls: botocore's request pipeline costs ~2 ms of CPU
per call, measured here, so reading 10,000 adapter configs took ~29 s on 2 cores, and its XML
parsing of a 20,000-object listing another 2 s. Even ``generate_presigned_url`` spends most of
its time resolving the endpoint again for each object, so object URLs are built from the
bucket URL botocore resolved once and signed by ``sigv4`` (botocore's signer re-parses
each URL: ~0.3 ms per request). Pagination
follows ListObjectsV2's continuation token (1,000 keys per page)."""

from __future__ import annotations

import asyncio
import datetime
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import unquote_plus, urlsplit

import aiohttp
import boto3
import yarl
from botocore.config import Config
from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError

from lorafleet_api.storage import (
    ACCESS_DENIED,
    NOT_FOUND,
    CredentialsError,
    StorageCredentials,
    s3_code_reason,
)
from lorafleet_operator.adapters import StoredObject
from lorafleet_operator.errors import (
    AccessDeniedError,
    StorageError,
    StorageUnreachableError,
    storage_error,
)
from lorafleet_operator.model.adaptercatalog import StorageLocation
from lorafleet_operator.storage.base import DEFAULT_CONCURRENCY, AdapterStorage
from lorafleet_operator.storage.sigv4 import Credentials, ObjectUrlSigner

_REGION_CODES: Final = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed"})
# The default region when an S3-compatible endpoint is named without one (MinIO's default).
_ENDPOINT_DEFAULT_REGION: Final = "us-east-1"
_ATTEMPTS: Final = 3
_URL_LIFETIME_SECONDS: Final = 300
_TIMEOUT: Final = aiohttp.ClientTimeout(total=30, connect=5)


class _Response:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def error(self) -> tuple[str, str]:
        """S3's error ``(Code, Message)``; the HTTP status when the body has none."""
        code = message = ""
        if self.body:
            try:
                root = ET.fromstring(self.body)  # noqa: S314  (see the import)
                code = root.findtext("{*}Code") or root.findtext("Code") or ""
                message = root.findtext("{*}Message") or root.findtext("Message") or ""
            except ET.ParseError:
                pass
        return code or str(self.status), message or f"HTTP {self.status}"


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
        try:
            self._keys = credentials.s3_keys() if credentials else {}
        except CredentialsError as err:
            raise storage_error(err.reason, str(err)) from None
        self._endpoint = endpoint
        self._region = region or (_ENDPOINT_DEFAULT_REGION if endpoint else None)
        # A session per storage (boto3's default session is shared process state); with the
        # Secret's keys in it, or the standard chain when there is no Secret.
        self._boto = boto3.session.Session(**self._keys)
        self._client = self._make_client(self._region)
        self._signer: ObjectUrlSigner | None = None
        self._session: aiohttp.ClientSession | None = None

    def _make_client(self, region: str | None) -> Any:
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"} if self._endpoint else None,
        )
        self._signer = None
        return self._boto.client(
            "s3", endpoint_url=self._endpoint, region_name=region, config=config
        )

    def describe(self) -> str:
        where = f" at {self._endpoint}" if self._endpoint else ""
        return f"{self.location.uri}{where}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ the interface
    async def list_objects(self, split_after: Sequence[str] = ()) -> list[StoredObject]:
        """Every object under the prefix. ``split_after`` (keys relative to the prefix, e.g.
        adapter names from the last sync) cuts the key space into ranges listed side by
        side: a listing page is a server-side directory walk, and one chain of 20 pages
        (10,000 adapters) was most of an incremental sync."""
        bounds = sorted(set(split_after))
        starts: list[str | None] = [None, *bounds]
        ends: list[str | None] = [*bounds, None]
        ranges = await asyncio.gather(
            *(self._list_range(start, end) for start, end in zip(starts, ends, strict=True))
        )
        return [stored for chunk in ranges for stored in chunk]

    async def _list_range(self, after: str | None, until: str | None) -> list[StoredObject]:
        """Objects whose relative key is > ``after`` and <= ``until`` (None: unbounded).
        S3 lists in UTF-8 byte order, which is Python's code point order for str."""
        prefix = self.location.prefix
        objects: list[StoredObject] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {
                "Bucket": self.location.bucket,
                "Prefix": prefix,
                "MaxKeys": 1000,
            }
            if token:
                params["ContinuationToken"] = token
            elif after is not None:
                params["StartAfter"] = prefix + after
            response = await self._call("list_objects_v2", params)
            try:
                root = ET.fromstring(response.body)  # noqa: S314  (see the import)
            except ET.ParseError:
                raise StorageUnreachableError(
                    f"{self.describe()} answered a listing with something that is not S3 XML"
                ) from None
            # botocore asks for EncodingType=url when it signs a listing (keys may hold
            # characters XML 1.0 cannot carry); it decodes them with unquote_plus, as here.
            encoded = root.findtext("{*}EncodingType") == "url"
            for entry in root:
                if not entry.tag.endswith("Contents"):
                    continue
                # Direct children, not findtext("{*}..."): ElementPath costs ~1 s per 60,000
                # lookups, a listing of 10,000 adapters makes 60,000.
                fields = {child.tag.rpartition("}")[2]: child.text or "" for child in entry}
                key = fields.get("Key", "")
                if encoded:
                    key = unquote_plus(key)
                relative = key[len(prefix) :]
                if until is not None and relative > until:
                    return objects  # the next range lists the rest
                objects.append(
                    StoredObject(
                        key=relative,
                        size=int(fields.get("Size") or 0),
                        token=fields.get("ETag", "").strip('"'),
                    )
                )
            token = root.findtext("{*}NextContinuationToken")
            if root.findtext("{*}IsTruncated") != "true" or not token:
                return objects

    async def read(self, key: str, max_bytes: int) -> bytes:
        params = {"Bucket": self.location.bucket, "Key": self.location.prefix + key}
        # No Range header: the listing already told the size (the scan reads only configs
        # under the limit), and a ranged GET costs the server more than a plain one.
        response = await self._call("get_object", params, max_bytes=max_bytes)
        return response.body

    def _sign_object_get(self, key: str) -> str:
        """A presigned GET of ``key`` (full key), without botocore's per-call endpoint
        resolution and URL re-parsing: the bucket URL is resolved once by botocore
        (addressing style, partition, region) and the URL is signed by ``sigv4``."""
        if self._signer is None:
            url = self._client.generate_presigned_url(
                "head_bucket", Params={"Bucket": self.location.bucket}
            )
            parts = urlsplit(url)
            self._signer = ObjectUrlSigner(
                f"{parts.scheme}://{parts.netloc}{parts.path}", self._client.meta.region_name
            )
        credentials = self._boto.get_credentials()
        if credentials is None:
            raise NoCredentialsError()
        # Refreshable credentials (IRSA) renew themselves here when they are about to expire.
        frozen = credentials.get_frozen_credentials()
        return self._signer.sign_get(
            key,
            Credentials(frozen.access_key, frozen.secret_key, frozen.token),
            datetime.datetime.now(datetime.UTC),
            _URL_LIFETIME_SECONDS,
        )

    # ------------------------------------------------------------------ plumbing
    def _presign(self, operation: str, params: dict[str, Any]) -> str:
        where = self.describe()
        try:
            if operation == "get_object":
                return self._sign_object_get(params["Key"])
            return str(
                self._client.generate_presigned_url(
                    operation, Params=params, ExpiresIn=_URL_LIFETIME_SECONDS
                )
            )
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise self.rescrubbed(
                AccessDeniedError(f"no S3 credentials found for {where}: {err}")
            ) from None
        except BotoCoreError as err:
            # Credential providers (IRSA, instance metadata) failing to hand out keys.
            raise self.rescrubbed(
                AccessDeniedError(f"S3 credentials unavailable for {where}: {err}")
            ) from None

    async def _call(
        self,
        operation: str,
        params: dict[str, Any],
        max_bytes: int | None = None,
    ) -> _Response:
        """Sign and send one request; retry throttling, 5xx and dropped connections with
        backoff; follow a bucket's region once; raise a scrubbed StorageError otherwise."""
        where = self.describe()
        moved_region = False
        url = self._presign(operation, params)
        for attempt in range(_ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.2 * 4 ** (attempt - 1))
            try:
                response = await self._send(url, max_bytes)
            except (aiohttp.ClientError, TimeoutError) as err:
                if attempt + 1 < _ATTEMPTS:
                    continue
                raise self.rescrubbed(
                    StorageUnreachableError(
                        f"S3 endpoint unreachable for {where}: {type(err).__name__}: {err}"
                    )
                ) from None
            if response.status < 300:
                return response
            code, message = response.error()
            bucket_region = response.headers.get("x-amz-bucket-region")
            if code in _REGION_CODES and bucket_region and not moved_region:
                # The bucket lives in another region than the one we signed for.
                moved_region = True
                self._region = bucket_region
                self._client = self._make_client(bucket_region)
                url = self._presign(operation, params)
                continue
            error = self._classify(response.status, code, message)
            if isinstance(error, StorageUnreachableError) and attempt + 1 < _ATTEMPTS:
                continue
            raise self.rescrubbed(error) from None
        raise AssertionError("unreachable: the loop returns or raises")

    async def _send(self, url: str, max_bytes: int | None) -> _Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency),
                timeout=_TIMEOUT,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        # encoded=True: the signed URL is already percent-encoded exactly as it was signed.
        async with self._session.get(yarl.URL(url, encoded=True)) as response:
            if max_bytes is None or response.status >= 300:
                body = await response.read()
            else:
                # At most max_bytes + 1: an object rewritten larger since the listing must
                # not cost memory (the caller sees it is too large).
                body = await response.content.read(max_bytes + 1)
                while len(body) <= max_bytes and not response.content.at_eof():
                    chunk = await response.content.read(max_bytes + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
            return _Response(response.status, response.headers, body)

    def _classify(self, status: int, code: str, message: str) -> StorageError:
        """AccessDenied, NotFound, or StorageUnreachable for everything else (throttling,
        5xx, and codes we do not know), which ``_call`` retries."""
        where = self.describe()
        reason = s3_code_reason(code)
        if status in (401, 403):
            reason = ACCESS_DENIED
        elif status == 404 and reason != ACCESS_DENIED:
            reason = NOT_FOUND
        if reason == ACCESS_DENIED:
            return storage_error(reason, f"S3 refused access to {where}: {code}: {message}")
        if reason == NOT_FOUND:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return storage_error(reason, f"S3 {what} not found at {where}: {code}: {message}")
        return storage_error(reason, f"S3 failed for {where}: {code} (HTTP {status}): {message}")
