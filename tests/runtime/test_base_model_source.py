"""A LoRAModel whose ``baseModel.source`` is a bucket prefix without a model: the replica
must fail at once with a reason (Serve shows it; the operator's Degraded condition carries it),
not hang in its constructor while vLLM treats the URI as a model name. Checked against a real
MinIO with the storage client Ray Serve LLM downloads with (boto3's default chain)."""

from __future__ import annotations

import secrets

import boto3
import pytest

from lorafleet_runtime.engines.vllm.server import base_model_problem
from lorafleet_testbed.storage import MinioServer


@pytest.fixture
def bucket(minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A bucket with a model folder holding config.json and an empty-looking prefix; the
    environment a Ray pod gets for it (AWS_* variables and the endpoint)."""
    name = "base-" + secrets.token_hex(4)
    client = minio.s3_client()
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="models/tiny/config.json", Body=b'{"model_type": "qwen2"}')
    client.put_object(Bucket=name, Key="models/tiny/model.safetensors", Body=b"x")
    client.put_object(Bucket=name, Key="adapters/a0/adapter_config.json", Body=b"{}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", minio.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # boto3's default session resolves credentials once per process; a pod's never change,
    # these tests' do.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return name


def test_a_model_folder_is_accepted(bucket: str) -> None:
    assert base_model_problem(f"s3://{bucket}/models/tiny") is None
    assert base_model_problem(f"s3://{bucket}/models/tiny/") is None


@pytest.mark.parametrize("prefix", ["models/empty", "adapters/a0", "models"])
def test_a_prefix_without_a_model_is_refused_with_what_it_must_hold(
    bucket: str, prefix: str
) -> None:
    uri = f"s3://{bucket}/{prefix}"
    problem = base_model_problem(uri)
    assert problem is not None
    assert f"baseModel.source {uri} holds no readable config.json" in problem
    assert "folder of a Hugging Face model" in problem


def test_wrong_credentials_read_as_missing_and_never_show_the_key(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(12)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    problem = base_model_problem(f"s3://{bucket}/models/tiny")
    assert problem is not None and "readable with the runtime's storage credentials" in problem
    assert wrong not in problem


def test_hugging_face_ids_and_mounted_paths_are_not_checked_here() -> None:
    assert base_model_problem("Qwen/Qwen2.5-0.5B-Instruct") is None
    assert base_model_problem("/models/qwen") is None
