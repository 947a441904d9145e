"""Credentials never leave the storage layer in a message."""

from __future__ import annotations

import pytest

from lorafleet_api.storage import (
    S3_ACCESS_KEY_ID,
    S3_SECRET_ACCESS_KEY,
    CredentialsError,
)
from lorafleet_operator.errors import AccessDeniedError
from lorafleet_operator.model.adaptercatalog import CatalogSource
from lorafleet_operator.storage import StorageCredentials, open_storage, scrub


def test_known_secret_values_and_credential_shapes_are_redacted() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    message = (
        "InvalidAccessKeyId: The AWS Access Key Id AKIAIOSFODNN7EXAMPLE does not exist; "
        f"request https://b.s3/x?X-Amz-Signature=abcdef0123&X-Amz-Credential=AKIA/2026 "
        f"Authorization: AWS4-HMAC-SHA256 Credential=x secret was {secret}"
    )
    cleaned = scrub(message, [secret])
    for leaked in (secret, "AKIAIOSFODNN7EXAMPLE", "abcdef0123", "AWS4-HMAC-SHA256"):
        assert leaked not in cleaned
    assert "InvalidAccessKeyId" in cleaned  # the useful part stays


def test_private_keys_of_service_accounts_are_redacted() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\n-----END PRIVATE KEY-----"
    assert "MIIEvQIBADAN" not in scrub(f"bad key {key} in request")


def test_credentials_do_not_print_their_values() -> None:
    creds = StorageCredentials(
        secret_name="demo/minio",
        data={S3_ACCESS_KEY_ID: "lorafleet-1234", S3_SECRET_ACCESS_KEY: "s3cr3t-value"},
    )
    assert "s3cr3t-value" not in repr(creds)
    assert set(creds.secret_values()) == {"lorafleet-1234", "s3cr3t-value"}


def test_a_secret_without_s3_keys_is_access_denied_naming_the_keys() -> None:
    creds = StorageCredentials(secret_name="demo/empty", data={"other": "x"})
    with pytest.raises(CredentialsError) as caught:
        creds.s3_keys()
    assert "AWS_ACCESS_KEY_ID" in str(caught.value) and caught.value.reason == "AccessDenied"
    # The operator's storage turns it into its AccessDenied error (a status reason).
    location = CatalogSource.model_validate({"uri": "s3://bucket/prefix"})
    with pytest.raises(AccessDeniedError) as denied:
        open_storage(location, creds)
    assert "AWS_SECRET_ACCESS_KEY" in denied.value.message
