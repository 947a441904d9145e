"""Catalog scans against the real S3-compatible server, the GCS emulator and a local folder:
real PEFT adapters are valid, every broken folder gets its reason, listings paginate past
1,000 adapters, and storage faults are told apart without leaking credentials."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs_storage

from lorafleet_operator.errors import (
    AccessDeniedError,
    StorageNotFoundError,
    StorageUnreachableError,
)
from lorafleet_operator.model.adaptercatalog import AdapterCatalogSpec
from lorafleet_operator.storage import (
    ScanResult,
    StorageCredentials,
    open_storage,
    scan_source,
)
from lorafleet_testbed.adapter_trees import (
    MAX_ADAPTER_SIZE,
    TINY_MODEL_ID,
    VALID_FOLDERS,
    build_real_adapters,
    tree_files,
    upload_gcs,
    upload_s3,
    write_base_model_spellings,
    write_catalog_tree,
    write_link_kinds,
    write_weight_kinds,
)
from lorafleet_testbed.storage import FakeGcsServer, MinioServer


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # Shared with other modules through the session's base temp dir: built once (~10 s).
    return build_real_adapters(tmp_path_factory.getbasetemp() / "tiny-lora")


@pytest.fixture(scope="module")
def tree(
    adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("catalog") / "loras"
    return root, write_catalog_tree(root, adapters)


def _s3(minio: MinioServer, secret: str | None = None) -> Any:
    return minio.s3_client(secret_key=secret)


def _creds(minio: MinioServer, secret: str | None = None) -> StorageCredentials:
    return StorageCredentials(
        secret_name="test/minio",
        data={
            "AWS_ACCESS_KEY_ID": minio.access_key,
            "AWS_SECRET_ACCESS_KEY": secret or minio.secret_key,
        },
    )


def _spec(uri: str, endpoint: str | None = None, **extra: Any) -> AdapterCatalogSpec:
    return AdapterCatalogSpec.model_validate(
        {
            "source": {"uri": uri, **({"endpoint": endpoint} if endpoint else {})},
            "baseModel": TINY_MODEL_ID,
            "maxAdapterSize": MAX_ADAPTER_SIZE,
            **extra,
        }
    )


def _scan(
    spec: AdapterCatalogSpec,
    credentials: StorageCredentials | None = None,
    previous: dict[str, Any] | None = None,
) -> ScanResult:
    return asyncio.run(scan_source(spec, credentials, previous))


def _reasons(result: ScanResult) -> dict[str, str | None]:
    return {record.name: record.reason for record in result.records}


@pytest.fixture(scope="module")
def s3_catalog(minio: MinioServer, tree: tuple[Path, dict[str, str | None]]) -> str:
    root, _ = tree
    bucket = "catalog-" + secrets.token_hex(4)
    client = _s3(minio)
    client.create_bucket(Bucket=bucket)
    upload_s3(client, bucket, "loras/qwen/", tree_files(root))
    return f"s3://{bucket}/loras/qwen"


@pytest.fixture
def emulator_env(gcs: FakeGcsServer) -> Iterator[None]:
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.endpoint
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def test_local_folder_real_adapters_valid_and_every_broken_kind_reported(
    tree: tuple[Path, dict[str, str | None]], tmp_path: Path
) -> None:
    shared, expected = tree
    # A copy with what only a mounted folder holds (symbolic links) or checks (weight files'
    # safetensors headers), and adapters trained on other spellings of the base model (valid;
    # kept out of the shared tree's counts).
    root = tmp_path / "loras"
    shutil.copytree(shared, root, symlinks=True)
    expected = {
        **expected,
        **write_link_kinds(root, tmp_path / "outside"),
        **write_weight_kinds(root),
        **write_base_model_spellings(root),
    }
    result = _scan(_spec(f"file://{root}"))
    assert _reasons(result) == expected
    assert len({r for r in expected.values() if r}) >= 18
    assert result.stray_files == 2
    # Nothing behind a link reached the index: /etc/passwd's size is not a file size there.
    linked = {r.name: r for r in result.records}["link-to-passwd"]
    assert "adapter_model.safetensors" not in {f.name for f in linked.files}
    support = {r.name: r for r in result.records}["support-v2"]
    assert (support.rank, support.alpha, support.peft_type) == (16, 32.0, "LORA")
    assert support.target_modules == ("q_proj", "v_proj")
    assert support.uri == f"file://{root}/support-v2/"
    weights = {f.name: f.size for f in support.files}["adapter_model.safetensors"]
    assert weights == (root / "support-v2" / "adapter_model.safetensors").stat().st_size


def test_s3_server_gives_the_same_verdicts_with_a_credentials_secret(
    minio: MinioServer, s3_catalog: str, tree: tuple[Path, dict[str, str | None]]
) -> None:
    _, expected = tree
    result = _scan(_spec(s3_catalog, minio.endpoint), _creds(minio))
    assert _reasons(result) == expected
    assert result.stray_files == 2
    assert all(r.uri.startswith(s3_catalog + "/") for r in result.records)


def test_gcs_emulator_gives_the_same_verdicts(
    gcs: FakeGcsServer, tree: tuple[Path, dict[str, str | None]], emulator_env: None
) -> None:
    root, expected = tree
    client = gcs_storage.Client(
        project="lorafleet-test",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=gcs.endpoint),
    )
    name = "catalog-" + secrets.token_hex(4)
    bucket = client.create_bucket(name)
    upload_gcs(bucket, "loras/", tree_files(root))
    result = _scan(_spec(f"gs://{name}/loras"))
    assert _reasons(result) == expected
    # Revisions come from GCS generations: a re-upload is a new revision.
    before = {r.name: r.revision for r in result.records}
    bucket.blob("loras/billing/adapter_model.safetensors").upload_from_filename(
        str(root / "billing" / "adapter_model.safetensors")
    )
    after = {r.name: r.revision for r in _scan(_spec(f"gs://{name}/loras")).records}
    assert after["billing"] != before["billing"]
    assert after["support-v1"] == before["support-v1"]


def test_gcs_missing_bucket_is_not_found(emulator_env: None) -> None:
    with pytest.raises(StorageNotFoundError):
        _scan(_spec("gs://no-such-bucket-" + secrets.token_hex(3) + "/loras"))


def test_more_than_a_thousand_adapters_paginate_and_resync_incrementally(
    minio: MinioServer, adapters: dict[str, Path]
) -> None:
    source = adapters["support-v1"]
    config = source / "adapter_config.json"
    weights = source / "adapter_model.safetensors"
    bucket = "many-" + secrets.token_hex(4)
    client = _s3(minio)
    client.create_bucket(Bucket=bucket)
    files = [
        (f"adapter-{i:04d}/{path.name}", path) for i in range(1_100) for path in (config, weights)
    ]
    upload_s3(client, bucket, "loras/", files)
    spec = _spec(f"s3://{bucket}/loras", minio.endpoint)
    first = _scan(spec, _creds(minio))
    assert len(first.records) == 1_100
    assert all(record.valid for record in first.records)
    assert first.records[-1].name == "adapter-1099"
    assert first.configs_read == 1_100

    # Listing in ranges side by side (as incremental syncs of large catalogs do) yields
    # exactly the same objects as one chain of pages.
    async def listings() -> tuple[list[Any], list[Any]]:
        storage = open_storage(spec.source, _creds(minio))
        try:
            whole = await storage.list_objects()
            split = await storage.list_objects(
                split_after=["adapter-0001", "adapter-0333", "adapter-0999", "adapter-1099"]
            )
            return whole, split
        finally:
            await storage.close()

    whole, split = asyncio.run(listings())
    assert len(whole) == 2_200
    assert sorted(split, key=lambda o: o.key) == sorted(whole, key=lambda o: o.key)

    client.put_object(Bucket=bucket, Key="loras/adapter-0500/adapter_config.json", Body=b"[]")
    again = _scan(spec, _creds(minio), previous={r.name: r for r in first.records})
    assert again.configs_read == 1  # only the rewritten adapter was read again
    assert again.reused == 1_099
    assert {r.name: r.reason for r in again.records}["adapter-0500"] == "ConfigNotObject"


def test_wrong_credentials_are_access_denied_without_the_secret_in_the_message(
    minio: MinioServer, s3_catalog: str
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(16)
    with pytest.raises(AccessDeniedError) as err:
        _scan(_spec(s3_catalog, minio.endpoint), _creds(minio, secret=wrong))
    assert err.value.reason == "AccessDenied"
    assert wrong not in err.value.message and minio.secret_key not in err.value.message
    assert err.value.__cause__ is None  # the SDK exception (and its request) is not chained


def test_missing_bucket_and_missing_folder_are_not_found(
    minio: MinioServer, tmp_path: Path
) -> None:
    with pytest.raises(StorageNotFoundError) as err:
        _scan(_spec("s3://no-such-bucket/loras", minio.endpoint), _creds(minio))
    assert err.value.reason == "NotFound"
    with pytest.raises(StorageNotFoundError):
        _scan(_spec(f"file://{tmp_path}/absent"))


def test_a_stopped_server_is_unreachable_and_a_restarted_one_serves_again(
    minio: MinioServer, s3_catalog: str, tree: tuple[Path, dict[str, str | None]]
) -> None:
    spec = _spec(s3_catalog, minio.endpoint)
    minio.stop()
    try:
        with pytest.raises(StorageUnreachableError) as err:
            _scan(spec, _creds(minio))
        assert err.value.reason == "StorageUnreachable"
    finally:
        minio.start()
    assert _reasons(_scan(spec, _creds(minio))) == tree[1]


def test_catalog_scan_command_prints_what_a_sync_records(
    minio: MinioServer, s3_catalog: str, tree: tuple[Path, dict[str, str | None]]
) -> None:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": minio.access_key,
        "AWS_SECRET_ACCESS_KEY": minio.secret_key,
    }
    base = [sys.executable, "-m", "lorafleet_cli.main", "catalog", "scan", s3_catalog]
    flags = ["--endpoint", minio.endpoint, "--base-model", TINY_MODEL_ID]
    flags += ["--max-adapter-size", MAX_ADAPTER_SIZE]
    out = subprocess.run([*base, *flags, "-o", "json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert {a["name"]: a.get("reason") for a in printed["adapters"]} == tree[1]
    assert printed["counts"]["valid"] == VALID_FOLDERS
    assert printed["rankHistogram"] == {"8": 2, "16": 1}  # what vLLM can serve
    by_name = {a["name"]: a for a in printed["adapters"]}
    assert by_name["modules-to-save"]["modulesToSave"] == ["lm_head"]
    assert by_name["dora"]["variant"] == "dora"

    table = subprocess.run([*base, *flags], env=env, capture_output=True, text=True)
    assert table.returncode == 0
    assert "support-v2" in table.stdout and "BaseModelMismatch" in table.stdout
    assert f"{VALID_FOLDERS} valid" in table.stdout

    denied = subprocess.run(
        [*base, *flags],
        env={**env, "AWS_SECRET_ACCESS_KEY": "nope-" + minio.secret_key[::-1]},
        capture_output=True,
        text=True,
    )
    assert denied.returncode == 1
    assert "AccessDenied" in denied.stderr
    assert minio.secret_key[::-1] not in denied.stderr + denied.stdout


@pytest.fixture(autouse=True, scope="module")
def _cleanup_tree(tree: tuple[Path, dict[str, str | None]]) -> Iterator[None]:
    yield
    shutil.rmtree(tree[0], ignore_errors=True)
