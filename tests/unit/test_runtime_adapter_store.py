"""The replica's adapter store on a local folder: verified, atomic, bounded, deduplicated."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import IO

import pytest

from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.contract import CatalogRef
from lorafleet_api.storage import StorageCredentials
from lorafleet_runtime.adapters.disk_cache import PARTIAL_PREFIX, AdapterDiskCache
from lorafleet_runtime.adapters.index import (
    AdapterIndex,
    DirectoryIndexSource,
    write_index_directory,
    write_storage_options,
)
from lorafleet_runtime.adapters.remote_files import (
    AdapterStorageError,
    CatalogStorage,
    LocalFileSource,
)
from lorafleet_testbed.adapter_trees import safetensors_bytes


def _adapter(root: Path, name: str, payload: bytes) -> AdapterRecord:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    # The store hands nothing but safetensors files to the engine: wrap the test's bytes.
    (folder / "adapter_model.safetensors").write_bytes(safetensors_bytes(payload))
    files = [{"name": p.name, "size": p.stat().st_size} for p in sorted(folder.iterdir())]
    return AdapterRecord.model_validate(
        {
            "name": name,
            "uri": f"file://{folder}/",
            "revision": f"rev-{len(payload)}-{payload[:4].hex()}",
            "valid": True,
            "rank": 8,
            "files": files,
            "sizeBytes": sum(int(f["size"]) for f in files),  # type: ignore[call-overload]
        }
    )


class CountingSource(LocalFileSource):
    def __init__(self, delay: float = 0.0) -> None:
        self.opened = 0
        self.delay = delay

    def _open(self, uri: str) -> IO[bytes]:
        self.opened += 1
        time.sleep(self.delay)
        return super()._open(uri)


def test_download_is_verified_and_renamed_into_place(tmp_path: Path) -> None:
    record = _adapter(tmp_path / "bucket", "a", b"w" * 100)
    store = AdapterDiskCache(tmp_path / "cache")
    report = asyncio.run(store.ensure(record, LocalFileSource()))
    assert report.downloaded_bytes == record.size_bytes
    weights = (report.adapter.path / "adapter_model.safetensors").read_bytes()
    assert weights == safetensors_bytes(b"w" * 100)
    assert not list((tmp_path / "cache").glob(PARTIAL_PREFIX + "*"))


def test_size_mismatch_is_never_loadable(tmp_path: Path) -> None:
    record = _adapter(tmp_path / "bucket", "a", b"w" * 100)
    (tmp_path / "bucket" / "a" / "adapter_model.safetensors").write_bytes(b"short")
    store = AdapterDiskCache(tmp_path / "cache")
    with pytest.raises(AdapterStorageError) as err:
        asyncio.run(store.ensure(record, LocalFileSource()))
    assert err.value.reason == "Corrupt"
    assert list((tmp_path / "cache").iterdir()) == []
    assert store.cached() == []


def test_missing_files_are_a_storage_error_not_a_404(tmp_path: Path) -> None:
    record = _adapter(tmp_path / "bucket", "a", b"w" * 10)
    (tmp_path / "bucket" / "a" / "adapter_model.safetensors").unlink()
    store = AdapterDiskCache(tmp_path / "cache", tries=1)
    with pytest.raises(AdapterStorageError) as err:
        asyncio.run(store.ensure(record, LocalFileSource()))
    assert err.value.reason == "NotFound"
    assert err.value.status_code == 503


def test_leftovers_of_a_killed_download_are_removed_at_start(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    leftover = cache / f"{PARTIAL_PREFIX}dead"
    leftover.mkdir(parents=True)
    (leftover / "adapter_model.safetensors").write_bytes(b"half")
    AdapterDiskCache(cache)
    assert not leftover.exists()


def test_transfer_timeout_is_real(tmp_path: Path) -> None:
    record = _adapter(tmp_path / "bucket", "a", b"w" * 10)
    store = AdapterDiskCache(tmp_path / "cache", timeout_seconds=0.05, tries=1)
    with pytest.raises(AdapterStorageError) as err:
        asyncio.run(store.ensure(record, CountingSource(delay=0.2)))
    assert err.value.reason == "Timeout"
    assert store.cached() == []


def test_concurrent_requests_for_one_adapter_share_one_download(tmp_path: Path) -> None:
    record = _adapter(tmp_path / "bucket", "a", b"w" * 10)
    store = AdapterDiskCache(tmp_path / "cache")
    source = CountingSource(delay=0.05)

    async def many() -> None:
        await asyncio.gather(*(store.ensure(record, source) for _ in range(5)))

    asyncio.run(many())
    assert source.opened == len(record.files)


def test_new_revision_replaces_the_old_folder(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    store = AdapterDiskCache(tmp_path / "cache")
    old = asyncio.run(store.ensure(_adapter(bucket, "a", b"old-weights"), LocalFileSource()))
    new_record = _adapter(bucket, "a", b"new-weights!")
    new = asyncio.run(store.ensure(new_record, LocalFileSource()))
    assert new.adapter.path != old.adapter.path
    assert not old.adapter.path.exists()
    weights = (new.adapter.path / "adapter_model.safetensors").read_bytes()
    assert weights == safetensors_bytes(b"new-weights!")


def test_disk_cache_is_bounded_in_bytes_and_spares_pinned_adapters(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    records = [_adapter(bucket, f"a{i}", bytes([i]) * 1000) for i in range(4)]
    store = AdapterDiskCache(tmp_path / "cache", max_bytes=2500)
    asyncio.run(store.ensure(records[0], LocalFileSource()))
    store.pin("a0")
    for record in records[1:]:
        asyncio.run(store.ensure(record, LocalFileSource()))
    names = {entry.name for entry in store.cached()}
    assert "a0" in names
    assert store.used_bytes <= 2500
    assert len(list((tmp_path / "cache").iterdir())) == len(names)


def test_directory_index_merges_catalogs_and_tracks_changes(tmp_path: Path) -> None:
    index = tmp_path / "index"
    first = [_adapter(tmp_path / "b1", "a", b"1"), _adapter(tmp_path / "b1", "shared", b"1")]
    second = [_adapter(tmp_path / "b2", "shared", b"22"), _adapter(tmp_path / "b2", "z", b"3")]
    write_index_directory(index, "c1", "ns", "file:///b1", first)
    write_index_directory(index, "c2", "ns", "file:///b2", second)
    write_storage_options(index, "c2", "http://minio:9000", "us-east-1")
    directory = AdapterIndex(
        catalogs=[CatalogRef(name="c1", namespace="ns"), CatalogRef(name="c2", namespace="ns")],
        source=DirectoryIndexSource(index),
    )
    assert asyncio.run(directory.refresh())
    assert sorted(r.name for r in directory.records()) == ["a", "shared", "z"]
    found = directory.lookup("shared")
    assert found is not None
    assert found[0].uri.startswith(f"file://{tmp_path}/b1")  # the first catalog wins
    found_z = directory.lookup("z")
    assert found_z is not None
    assert found_z[1].endpoint == "http://minio:9000"
    assert not asyncio.run(directory.refresh())  # unchanged digests: nothing re-read
    write_index_directory(index, "c2", "ns", "file:///b2", second[:1])
    assert asyncio.run(directory.refresh())
    assert directory.lookup("z") is None


def test_changed_storage_options_are_picked_up_while_the_index_stays(tmp_path: Path) -> None:
    index = tmp_path / "index"
    write_index_directory(index, "c", "ns", "file:///b", [_adapter(tmp_path / "b", "a", b"1")])
    write_storage_options(index, "c", "http://old:9000", None)
    directory = AdapterIndex(
        catalogs=[CatalogRef(name="c", namespace="ns")],
        source=DirectoryIndexSource(index),
        storage_refresh_seconds=0.0,
    )
    assert asyncio.run(directory.refresh())
    assert not asyncio.run(directory.refresh())  # same index, same options: nothing changed
    write_storage_options(index, "c", "http://new:9000", None)
    assert asyncio.run(directory.refresh())
    found = directory.lookup("a")
    assert found is not None and found[1].endpoint == "http://new:9000"


def test_storage_clients_are_keyed_by_a_secret_fingerprint_that_reveals_nothing() -> None:
    def storage(secret: str) -> CatalogStorage:
        credentials = StorageCredentials("ns/s3", {"AWS_SECRET_ACCESS_KEY": secret})
        return CatalogStorage(uri="s3://b/p", endpoint="http://m:9000", credentials=credentials)

    old, same, rotated = storage("k-1"), storage("k-1"), storage("k-2")
    assert old.client_key == same.client_key
    assert old.client_key != rotated.client_key  # a rotated key gets a new SDK client
    assert "k-1" not in repr(old) and "k-1" not in str(old.client_key)


def test_a_directory_that_downloads_nothing_never_reads_storage_options(tmp_path: Path) -> None:
    class CountingSource(DirectoryIndexSource):
        reads = 0

        async def storage(self, catalog: CatalogRef, uri: str) -> CatalogStorage:
            CountingSource.reads += 1
            return await super().storage(catalog, uri)

    index = tmp_path / "index"
    write_index_directory(index, "c", "ns", "file:///b", [_adapter(tmp_path / "b", "a", b"1")])
    write_storage_options(index, "c", "http://m:9000", None)
    refs = [CatalogRef(name="c", namespace="ns")]
    ingress_like = AdapterIndex(
        catalogs=refs,
        source=CountingSource(index),
        storage_refresh_seconds=0.0,
        read_storage_options=False,
    )
    assert asyncio.run(ingress_like.refresh())
    assert not asyncio.run(ingress_like.refresh())
    assert CountingSource.reads == 0
    assert ingress_like.lookup("a") is not None
    replica_like = AdapterIndex(catalogs=refs, source=CountingSource(index))
    asyncio.run(replica_like.refresh())
    assert CountingSource.reads == 1
