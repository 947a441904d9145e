"""A replica killed in the middle of an adapter download leaves nothing that can be loaded:
the real S3-compatible server, a real process, kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.storage import StorageCredentials
from lorafleet_runtime.adapters.disk_cache import PARTIAL_PREFIX, AdapterDiskCache
from lorafleet_runtime.adapters.remote_files import (
    AdapterStorageError,
    CatalogStorage,
    open_file_source,
)
from lorafleet_testbed.adapter_trees import safetensors_bytes
from lorafleet_testbed.storage import MinioServer

BUCKET = "killed-download"
# 8 MiB of tensor bytes in a safetensors file: the cache loads nothing else.
BODY = safetensors_bytes(os.urandom(8 * 1024 * 1024))
WEIGHTS = len(BODY)

# The child downloads with a source that pauses after every chunk, so the kill lands mid-way.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from pathlib import Path
    from lorafleet_runtime.adapters import remote_files
    from lorafleet_runtime.adapters.disk_cache import AdapterDiskCache
    from lorafleet_api.catalog_index import AdapterRecord

    remote_files.CHUNK_BYTES = 256 * 1024
    record = AdapterRecord.model_validate_json(sys.argv[2])
    source = remote_files.open_file_source(
        remote_files.CatalogStorage(uri=record.uri, endpoint=sys.argv[3], region="us-east-1")
    )
    opened = source._open

    class Slow:
        def __init__(self, stream):
            self.stream = stream
        def read(self, n):
            time.sleep(0.2)
            return self.stream.read(n)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.stream.close()

    source._open = lambda uri: Slow(opened(uri))
    print("started", flush=True)
    asyncio.run(AdapterDiskCache(Path(sys.argv[1])).ensure(record, source))
    """
)


def test_killed_download_leaves_nothing_loadable(minio: MinioServer, tmp_path: Path) -> None:
    s3 = minio.s3_client()
    s3.create_bucket(Bucket=BUCKET)
    config = b'{"r": 8, "peft_type": "LORA"}'
    s3.put_object(Bucket=BUCKET, Key="loras/big/adapter_config.json", Body=config)
    s3.put_object(Bucket=BUCKET, Key="loras/big/adapter_model.safetensors", Body=BODY)
    record = AdapterRecord.model_validate(
        {
            "name": "big",
            "uri": f"s3://{BUCKET}/loras/big/",
            "revision": "r1",
            "valid": True,
            "rank": 8,
            "files": [
                {"name": "adapter_config.json", "size": len(config)},
                {"name": "adapter_model.safetensors", "size": WEIGHTS},
            ],
            "sizeBytes": len(config) + WEIGHTS,
        }
    )
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": minio.access_key,
        "AWS_SECRET_ACCESS_KEY": minio.secret_key,
    }
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(cache),
            json.dumps(record.model_dump(by_alias=True)),
            minio.endpoint,
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 30
    weights = None
    while time.monotonic() < deadline and weights is None:
        found = list(cache.glob(f"{PARTIAL_PREFIX}*/adapter_model.safetensors"))
        if found and found[0].stat().st_size > 0:
            weights = found[0]
        time.sleep(0.05)
    assert weights is not None, "the download never started"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert 0 < weights.stat().st_size < WEIGHTS
    # Only the partial folder is there: no <name>@<revision> folder a replica would load.
    assert [p.name.startswith(PARTIAL_PREFIX) for p in cache.iterdir()] == [True]

    store = AdapterDiskCache(cache)  # a restarted replica
    assert list(cache.iterdir()) == []
    # This time with the keys as a catalog's credentials Secret hands them over.
    credentials = StorageCredentials(
        secret_name="test/minio",
        data={"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key},
    )
    source = open_file_source(
        CatalogStorage(record.uri, minio.endpoint, minio.region, credentials=credentials)
    )
    report = asyncio.run(store.ensure(record, source))
    assert (report.adapter.path / "adapter_model.safetensors").stat().st_size == WEIGHTS


def test_a_non_safetensors_weight_file_from_s3_never_reaches_the_engine(
    minio: MinioServer, tmp_path: Path
) -> None:
    # S3 catalogs do not read weight files (a GET per adapter): the catalog called this one
    # valid, and the download is where it is refused, before anything is renamed into place.
    s3 = minio.s3_client()
    bucket = "pickled-" + os.urandom(4).hex()
    s3.create_bucket(Bucket=bucket)
    config = b'{"r": 8, "peft_type": "LORA", "target_modules": ["q_proj"]}'
    pickled = pickle.dumps({"lora_A": [0.0] * 4096}, protocol=2)
    s3.put_object(Bucket=bucket, Key="loras/p/adapter_config.json", Body=config)
    s3.put_object(Bucket=bucket, Key="loras/p/adapter_model.safetensors", Body=pickled)
    record = AdapterRecord.model_validate(
        {
            "name": "p",
            "uri": f"s3://{bucket}/loras/p/",
            "revision": "r1",
            "valid": True,
            "rank": 8,
            "files": [
                {"name": "adapter_config.json", "size": len(config)},
                {"name": "adapter_model.safetensors", "size": len(pickled)},
            ],
            "sizeBytes": len(config) + len(pickled),
        }
    )
    credentials = StorageCredentials(
        secret_name="test/minio",
        data={"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key},
    )
    source = open_file_source(
        CatalogStorage(record.uri, minio.endpoint, minio.region, credentials=credentials)
    )
    store = AdapterDiskCache(tmp_path / "cache", tries=3)
    with pytest.raises(AdapterStorageError) as err:
        asyncio.run(store.ensure(record, source))
    assert err.value.reason == "WeightsNotSafetensors"
    assert "safetensors header" in err.value.message
    assert minio.secret_key not in err.value.message
    assert store.cached() == [] and list((tmp_path / "cache").iterdir()) == []
