"""Storage rules both sides share (lorafleet_api.storage): the Secret format, the GCS client
setup, and what a failure means; and the runtime failing closed when a catalog's storage
options cannot be read."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from lorafleet_api.storage import (
    ACCESS_DENIED,
    CATALOG_UNAVAILABLE,
    NOT_FOUND,
    UNREACHABLE,
    CredentialsError,
    StorageCredentials,
)
from lorafleet_api.storage_sdk import gcs_client_kwargs
from lorafleet_operator.errors import (
    AccessDeniedError,
    StorageNotFoundError,
    StorageUnreachableError,
    storage_error,
)
from lorafleet_operator.model.adaptercatalog import StorageLocation
from lorafleet_operator.storage.s3 import S3Storage
from lorafleet_runtime.adapters.remote_files import (
    AdapterStorageError,
    CatalogStorage,
    FileSources,
    StorageUnavailable,
    open_file_source,
)


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def test_a_binary_key_in_a_secret_does_not_spoil_the_credentials() -> None:
    # The runtime rejected the whole Secret when any key was not text; the operator skipped
    # such keys. A Secret may carry more than the catalog needs (a CA bundle, a binary key).
    data = {
        "AWS_ACCESS_KEY_ID": _b64(b"AKIDEXAMPLE"),
        "AWS_SECRET_ACCESS_KEY": _b64(b"wJalrXUtnFEMI"),
        "ca.der": _b64(b"\x30\x82\xff\xfe"),
    }
    credentials = StorageCredentials.from_secret_data("ns/s3", data)
    assert credentials.s3_keys()["aws_access_key_id"] == "AKIDEXAMPLE"
    assert credentials.binary_keys == frozenset({"ca.der"})
    assert "wJalrXUtnFEMI" not in repr(credentials)


def test_a_needed_key_that_is_not_text_is_named_without_its_value() -> None:
    data = {
        "AWS_ACCESS_KEY_ID": _b64(b"AKIDEXAMPLE"),
        "AWS_SECRET_ACCESS_KEY": _b64(b"\xff\xfes3cr3t-value"),
    }
    credentials = StorageCredentials.from_secret_data("ns/s3", data)
    with pytest.raises(CredentialsError) as caught:
        credentials.s3_keys()
    message = str(caught.value)
    assert "AWS_SECRET_ACCESS_KEY is not UTF-8 text" in message
    assert "ns/s3" in message and "s3cr3t-value" not in message


def test_a_missing_key_says_which_keys_the_scheme_needs() -> None:
    credentials = StorageCredentials.from_secret_data("ns/gcs", {})
    with pytest.raises(CredentialsError, match=r"needs the key service-account\.json for a gs://"):
        credentials.gcs_service_account()


def test_gcs_with_an_endpoint_and_no_secret_is_anonymous_on_both_sides() -> None:
    # The runtime went anonymous, the operator looked up default credentials (which probes
    # the GCE metadata server on a machine without any): one rule now.
    from google.auth.credentials import AnonymousCredentials

    kwargs = gcs_client_kwargs("http://127.0.0.1:4443", None)
    assert isinstance(kwargs["credentials"], AnonymousCredentials)
    assert kwargs["client_options"].api_endpoint == "http://127.0.0.1:4443"
    assert gcs_client_kwargs(None, None) == {}  # the standard chain, STORAGE_EMULATOR_HOST


def test_gcs_with_a_secret_never_uses_other_credentials() -> None:
    credentials = StorageCredentials("ns/gcs", {"service-account.json": '{"type": "x"}'})
    with pytest.raises(CredentialsError, match="not a service-account key"):
        gcs_client_kwargs("http://127.0.0.1:4443", credentials)


@pytest.mark.parametrize(
    "reason,cls",
    [
        (NOT_FOUND, StorageNotFoundError),
        (ACCESS_DENIED, AccessDeniedError),
        (UNREACHABLE, StorageUnreachableError),
        ("SomethingNew", StorageUnreachableError),
    ],
)
def test_a_reason_becomes_one_storage_error(reason: str, cls: type[Exception]) -> None:
    error = storage_error(reason, "message")
    assert type(error) is cls
    assert error.message == "message"


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (403, "AccessDenied", AccessDeniedError),
        (400, "InvalidAccessKeyId", AccessDeniedError),
        (404, "NoSuchBucket", StorageNotFoundError),
        (404, "", StorageNotFoundError),
        (503, "SlowDown", StorageUnreachableError),
        (500, "InternalError", StorageUnreachableError),
        (400, "SomethingElse", StorageUnreachableError),
    ],
)
def test_s3_answers_are_classified(status: int, code: str, cls: type[Exception]) -> None:
    storage = S3Storage(
        StorageLocation.parse("s3://bucket/loras"),
        endpoint="http://127.0.0.1:9",
        credentials=StorageCredentials(
            "ns/s3", {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x" * 20}
        ),
    )
    assert type(storage._classify(status, code, "msg")) is cls


def test_an_unavailable_catalog_storage_opens_nothing_and_is_never_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, a 404 on the AdapterCatalog gave empty storage options: downloads fell back to
    # the pod's own credentials. Now nothing is opened, and the reason reaches the client.
    opened: list[Any] = []
    monkeypatch.setattr("boto3.session.Session", lambda **kwargs: opened.append(kwargs))
    storage = CatalogStorage(
        uri="s3://bucket/loras",
        unavailable=StorageUnavailable(CATALOG_UNAVAILABLE, "AdapterCatalog ns/c does not exist"),
    )
    with pytest.raises(AdapterStorageError) as caught:
        open_file_source(storage)
    assert (caught.value.reason, caught.value.message) == (
        CATALOG_UNAVAILABLE,
        "AdapterCatalog ns/c does not exist",
    )
    sources = FileSources()
    for _ in range(2):
        with pytest.raises(AdapterStorageError):
            sources.get(storage)
    assert opened == []


def test_an_unavailable_storage_never_gets_the_cached_client_of_an_available_one() -> None:
    # Same scheme, endpoint, region and no Secret: the same client key as a storage that was
    # fine a moment ago (its AdapterCatalog since deleted). The cache must not answer for it.
    sources = FileSources()
    fine = CatalogStorage(uri="file:///mnt/loras")
    assert sources.get(fine) is sources.get(fine)
    gone = CatalogStorage(
        uri="file:///mnt/loras",
        unavailable=StorageUnavailable(CATALOG_UNAVAILABLE, "AdapterCatalog ns/c does not exist"),
    )
    assert gone.client_key == fine.client_key
    with pytest.raises(AdapterStorageError, match="does not exist"):
        sources.get(gone)
