"""The S3-compatible server and the GCS emulator speak the real SDKs' protocols, refuse bad
credentials, and keep their objects across an outage."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs_storage

from lorafleet_testbed.storage import FakeGcsServer, MinioServer


def _s3(server: MinioServer, secret: str | None = None) -> object:
    return server.s3_client(
        secret_key=secret, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5
    )


def test_minio_stores_lists_and_survives_a_restart(minio: MinioServer) -> None:
    s3 = _s3(minio)
    s3.create_bucket(Bucket="roundtrip")  # type: ignore[attr-defined]
    for i in range(3):
        s3.put_object(
            Bucket="roundtrip",
            Key=f"loras/a{i}/adapter_config.json",  # type: ignore[attr-defined]
            Body=b'{"r": 8}',
        )
    listed = s3.list_objects_v2(Bucket="roundtrip", Prefix="loras/", Delimiter="/")  # type: ignore[attr-defined]
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == [
        "loras/a0/",
        "loras/a1/",
        "loras/a2/",
    ]

    minio.stop()
    with pytest.raises(EndpointConnectionError):
        s3.get_object(Bucket="roundtrip", Key="loras/a0/adapter_config.json")  # type: ignore[attr-defined]
    minio.start()
    body = s3.get_object(Bucket="roundtrip", Key="loras/a0/adapter_config.json")["Body"].read()  # type: ignore[attr-defined]
    assert body == b'{"r": 8}'


def test_minio_rejects_a_wrong_secret(minio: MinioServer) -> None:
    with pytest.raises(ClientError) as err:
        _s3(minio, secret="not-the-secret").list_buckets()  # type: ignore[attr-defined]
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_gcs_emulator_works_with_the_google_client(gcs: FakeGcsServer) -> None:
    client = gcs_storage.Client(
        project="lorafleet-test",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=gcs.endpoint),
    )
    bucket = client.create_bucket("emulated")
    bucket.blob("loras/a0/adapter_config.json").upload_from_string(b'{"r": 16}')
    names = [b.name for b in client.list_blobs("emulated", prefix="loras/")]
    assert names == ["loras/a0/adapter_config.json"]
    blob = client.bucket("emulated").get_blob("loras/a0/adapter_config.json")
    assert blob is not None
    assert blob.download_as_bytes() == b'{"r": 16}'
    assert blob.generation  # revisions exist, which catalog sync relies on
