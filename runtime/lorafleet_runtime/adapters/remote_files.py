"""Read adapter files from S3, GCS or a local folder, in chunks, with a deadline.

A catalog's storage (:class:`CatalogStorage`: its URI, endpoint, region and the Secret named
by the AdapterCatalog) opens one :class:`AdapterFileSource`, made once per storage and Secret
version (:class:`FileSources`). A storage whose AdapterCatalog or Secret could not be read
opens nothing: downloads fail with the reason rather than use other credentials.

Chunked reads are what makes the transfer timeout real: the copy checks the deadline between
chunks and stops, instead of only bounding a lock wait (Ray Serve LLM 2.60's
``download_timeout_s``). Errors are classified as the operator classifies them
(lorafleet_api.storage: StorageUnreachable, AccessDenied, NotFound; plus Timeout) with messages that
carry no credentials: the SDK exception text is not passed on."""

from __future__ import annotations

import abc
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import urlparse

from lorafleet_api.storage import (
    ACCESS_DENIED,
    NOT_FOUND,
    UNREACHABLE,
    CredentialsError,
    LinkRefusedError,
    StorageCredentials,
    open_below,
    os_error_reason,
    s3_code_reason,
)
from lorafleet_api.storage_sdk import gcs_client_kwargs, gcs_error_reason

CHUNK_BYTES: Final = 1 << 20
# SDK clients kept per (scheme, endpoint, region, Secret fingerprint).
MAX_SOURCES: Final = 32

# (scheme, endpoint, region, Secret fingerprint): what makes two storages share an SDK client.
ClientKey = tuple[str, str | None, str | None, str | None]


@dataclass(frozen=True)
class StorageUnavailable:
    """Why a catalog's storage must not be opened: its AdapterCatalog or the Secret it names
    could not be read. Nothing is downloaded then, not even with the pod's own credentials."""

    reason: str
    message: str


@dataclass(frozen=True)
class CatalogStorage:
    """Where a catalog's adapters are and how to reach that storage."""

    uri: str
    endpoint: str | None = None
    region: str | None = None
    credentials: StorageCredentials | None = field(default=None, repr=False)
    unavailable: StorageUnavailable | None = None

    @property
    def client_key(self) -> ClientKey:
        """Storages with the same key share one SDK client (a rotated Secret gets a new one)."""
        secret = self.credentials.fingerprint() if self.credentials else None
        return (self.uri.split("://", 1)[0], self.endpoint, self.region, secret)


class AdapterStorageError(Exception):
    """Fetching an adapter failed for a reason the client cannot fix (HTTP 503)."""

    status_code: Final = 503

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class AdapterFileSource(abc.ABC):
    """One storage (a scheme with its endpoint): reads files of adapter folders in it. One
    instance per catalog storage, so SDK clients are made once, not per download."""

    @abc.abstractmethod
    def _open(self, uri: str) -> IO[bytes]:
        """A readable stream of the object at ``uri``; SDK errors propagate."""

    @abc.abstractmethod
    def _classify(self, err: Exception, uri: str) -> AdapterStorageError | None: ...

    def copy_file(
        self,
        folder_uri: str,
        name: str,
        dest: Path,
        deadline: float,
        max_bytes: int | None = None,
    ) -> int:
        """Copy file ``name`` of the adapter folder ``folder_uri`` to ``dest``; the bytes
        written. Blocking (run it in a thread). Stops after ``max_bytes + 1`` bytes: a file
        rewritten larger than the catalog recorded (a 50 GB "config") costs no more than
        that; the caller sees the size is wrong."""
        uri = (folder_uri if folder_uri.endswith("/") else folder_uri + "/") + name
        written = 0
        try:
            with self._open(uri) as stream, dest.open("wb") as out:
                while True:
                    if time.monotonic() > deadline:
                        raise AdapterStorageError(
                            "Timeout", f"download of {uri} did not finish in time"
                        )
                    want = (
                        CHUNK_BYTES
                        if max_bytes is None
                        else min(CHUNK_BYTES, max_bytes + 1 - written)
                    )
                    chunk = stream.read(want) if want > 0 else b""
                    if not chunk:
                        return written
                    out.write(chunk)
                    written += len(chunk)
        except AdapterStorageError:
            raise
        except Exception as err:
            classified = self._classify(err, uri)
            if classified is None:
                raise
            raise classified from None


_WHAT: Final = {
    NOT_FOUND: "a file of the adapter is gone",
    ACCESS_DENIED: "access denied",
    UNREACHABLE: "storage unreachable",
}


def _error(reason: str, uri: str, detail: str = "") -> AdapterStorageError:
    return AdapterStorageError(reason, f"{uri}: {_WHAT[reason]}{detail}")


class LocalFileSource(AdapterFileSource):
    """A mounted folder. No symbolic link is followed from the catalog's folder down: neither
    the adapter folder nor the file may be a link (the catalog refuses such folders, and one
    swapped in after the sync is refused here, AccessDenied), so a link to ``/etc/passwd``
    named ``adapter_model.safetensors`` is never copied, let alone handed to the engine."""

    def _open(self, uri: str) -> IO[bytes]:
        path = Path(urlparse(uri).path)
        return open_below(path.parent.parent, f"{path.parent.name}/{path.name}")

    def _classify(self, err: Exception, uri: str) -> AdapterStorageError | None:
        reason = os_error_reason(err)
        if reason is None:
            return None
        if isinstance(err, LinkRefusedError):
            return _error(reason, uri, f" ({err})")
        strerror = getattr(err, "strerror", None)
        return _error(reason, uri, f" ({strerror})" if reason == UNREACHABLE and strerror else "")


class S3FileSource(AdapterFileSource):
    def __init__(
        self,
        endpoint: str | None,
        region: str | None,
        credentials: StorageCredentials | None = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        try:
            keys = credentials.s3_keys() if credentials else {}
        except CredentialsError as err:
            raise AdapterStorageError(err.reason, str(err)) from None
        # A session per source: the Secret's keys, or the pod's standard chain without one.
        self._client: Any = boto3.session.Session(**keys).client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or None,
            config=Config(
                connect_timeout=5, read_timeout=15, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )

    def _open(self, uri: str) -> IO[bytes]:
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        body: Any = self._client.get_object(Bucket=parsed.netloc, Key=key)["Body"]
        return body  # type: ignore[no-any-return]

    def _classify(self, err: Exception, uri: str) -> AdapterStorageError | None:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            return _error(s3_code_reason(code), uri, f" (S3 {code})")
        if isinstance(err, NoCredentialsError):
            return _error(ACCESS_DENIED, uri, " (no S3 credentials)")
        if isinstance(err, BotoCoreError | OSError):
            return _error(UNREACHABLE, uri, " (S3 endpoint)")
        return None


class GcsFileSource(AdapterFileSource):
    def __init__(self, endpoint: str | None, credentials: StorageCredentials | None = None) -> None:
        from google.cloud import storage as gcs

        try:
            kwargs = gcs_client_kwargs(endpoint, credentials)
        except CredentialsError as err:
            raise AdapterStorageError(err.reason, str(err)) from None
        self._client: Any = gcs.Client(**kwargs)

    def _open(self, uri: str) -> IO[bytes]:
        parsed = urlparse(uri)
        blob = self._client.bucket(parsed.netloc).blob(parsed.path.lstrip("/"))
        stream: Any = blob.open("rb", chunk_size=CHUNK_BYTES, timeout=15)
        return stream  # type: ignore[no-any-return]

    def _classify(self, err: Exception, uri: str) -> AdapterStorageError | None:
        reason = gcs_error_reason(err)
        return None if reason is None else _error(reason, uri, " (GCS)")


def _check_available(storage: CatalogStorage) -> None:
    if storage.unavailable is not None:
        raise AdapterStorageError(storage.unavailable.reason, storage.unavailable.message)


def open_file_source(storage: CatalogStorage) -> AdapterFileSource:
    """The source for the storage's scheme, with the catalog's Secret when it names one (else
    the SDK's standard chain). AdapterStorageError when the storage is unavailable (its
    AdapterCatalog or Secret could not be read: fail closed) or the Secret does not fit."""
    _check_available(storage)
    scheme = urlparse(storage.uri).scheme
    if scheme == "s3":
        return S3FileSource(storage.endpoint, storage.region, storage.credentials)
    if scheme == "gs":
        return GcsFileSource(storage.endpoint, storage.credentials)
    if scheme == "file":
        return LocalFileSource()
    raise AdapterStorageError(
        "Unsupported", f"{storage.uri}: unsupported storage scheme {scheme!r}"
    )


class FileSources:
    """One source per storage and Secret version, made on first use; the oldest goes when
    more than ``max_sources`` are kept (keys of rotated Secrets)."""

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self.max_sources = max_sources
        self._sources: OrderedDict[ClientKey, AdapterFileSource] = OrderedDict()

    def get(self, storage: CatalogStorage) -> AdapterFileSource:
        # Before the cache: an unavailable storage may share its key with a cached client.
        _check_available(storage)
        key = storage.client_key
        source = self._sources.get(key)
        if source is None:
            source = open_file_source(storage)
            self._sources[key] = source
            while len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        return source


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
