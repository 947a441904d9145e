"""Control-plane and operator faults against a real etcd + kube-apiserver, lorafleet's operator
as a process and a real MinIO: the API server or etcd crashes and comes back, or the operator is
killed -9 in the middle of writing an index. Afterwards the operator (same process) reacts to
edits again, its periodic loops still run, the runtime's index reader kept its last index and
then follows the catalog, and nothing is lost or duplicated.

Restarting the session's control plane would disturb every other module, so this module starts
its own. Each test prints what a user saw and how long recovery took (``-s`` shows them)."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from lorafleet_api.catalog_index import (
    MANIFEST_KEY,
    SHARD_KEY,
    manifest_name,
    parse_manifest,
    read_index,
    shard_of,
)
from lorafleet_api.contract import CatalogRef
from lorafleet_api.names import (
    ANNOTATION_INDEX_DIGEST,
    ANNOTATION_SYNC_REQUESTED,
    LABEL_CATALOG,
    LABEL_CATALOG_INDEX_PART,
)
from lorafleet_runtime.adapters.index import AdapterIndex, KubernetesIndexSource
from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.storage import MinioServer
from lorafleet_testbed.toolchain import REPO_ROOT

from .conftest import (
    KillOnEvent,
    OperatorProcess,
    apply_in,
    eventually,
    get_json,
    rayservice_for,
    tamper_rayservice,
)

MINIMAL = REPO_ROOT / "examples" / "lora-model-minimal.yaml"
DRIFT_SECONDS = 2
# An edit must reach the RayService within this long after the API is back: kopf re-lists
# and re-watches with its own backoff (at most a few seconds) plus one reconcile.
RECOVERY_BOUND_SECONDS = 30
# Adapter names near the 128-character limit make index records ~450 bytes, so 3,000 of them
# (1.3 MiB) need four shards (a shard aims at 512 KiB) while the bucket holds one tiny
# object per adapter: listing alone classifies them (no adapter_config.json).
LONG_NAME = "adapter-" + "x" * 100
BIG_CATALOG_ADAPTERS = 3000
BIG_CATALOG_SHARDS = 4


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    """This module's own control plane: its tests crash etcd and the API server."""
    with ControlPlane.start() as own:
        yield own


@pytest.fixture(scope="module")
def operator(
    plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        plane.kubeconfig,
        tmp_path_factory.mktemp("fault-operator"),
        debounce_seconds=3,
        drift_check_seconds=DRIFT_SECONDS,
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def reader_env(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    # The runtime's index source reads KUBECONFIG as the pod would read its service account.
    monkeypatch.setenv("KUBECONFIG", str(plane.kubeconfig))


# ------------------------------------------------------------------ helpers
def _namespace(plane: ControlPlane, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    plane.kubectl("create", "namespace", name)
    return name


def _max_loras(rayservice: dict[str, Any]) -> int:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    return int(app["args"]["engine"]["max_loras"])


def _patch_max_loras(plane: ControlPlane, namespace: str, model: str, value: int) -> None:
    plane.kubectl(
        "patch",
        "loramodel",
        model,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"engine": {"maxLoras": value, "maxCpuLoras": max(32, value)}}}),
    )


def _timed(check: Callable[[], Any], *, timeout: float, what: str) -> float:
    """Seconds until ``check()`` holds (polled every 0.2 s); fails after ``timeout``."""
    started = time.monotonic()
    eventually(check, timeout=timeout, interval=0.2, what=what)
    return time.monotonic() - started


class Bucket:
    """A MinIO bucket of adapter folders; each folder holds one small weights file and no
    adapter_config.json, so every adapter is in the index as invalid (ConfigMissing)."""

    def __init__(self, minio: MinioServer) -> None:
        self.client: Any = minio.s3_client()
        self.name = "faults-" + secrets.token_hex(4)
        self.prefix = "loras/"
        self.client.create_bucket(Bucket=self.name)

    @property
    def uri(self) -> str:
        return f"s3://{self.name}/{self.prefix.rstrip('/')}"

    def add(self, names: list[str]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def put(name: str) -> None:
            key = f"{self.prefix}{name}/adapter_model.safetensors"
            self.client.put_object(Bucket=self.name, Key=key, Body=b"w")

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(put, names))


def _catalog(
    plane: ControlPlane, minio: MinioServer, namespace: str, name: str, uri: str, interval: str
) -> None:
    keys = {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-keys"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
    }
    apply_in(plane, secret, namespace)
    catalog = {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "AdapterCatalog",
        "metadata": {"name": name},
        "spec": {
            "source": {
                "uri": uri,
                "endpoint": minio.endpoint,
                "credentialsSecretRef": {"name": f"{name}-keys"},
            },
            "syncInterval": interval,
        },
    }
    apply_in(plane, catalog, namespace)


def _synced_count(plane: ControlPlane, namespace: str, name: str) -> int:
    status = get_json(plane, "adaptercatalog", name, "-n", namespace).get("status", {})
    return int((status.get("counts") or {}).get("found") or -1)


def _synced_count_is(plane: ControlPlane, namespace: str, name: str, count: int) -> bool:
    return _synced_count(plane, namespace, name) == count


def _rewrites_a_shard(before: dict[str, str], event: dict[str, Any]) -> bool:
    """A watch event of a shard ConfigMap written with other content than ``before``."""
    meta = event["object"]["metadata"]
    digest = (meta.get("annotations") or {}).get(ANNOTATION_INDEX_DIGEST)
    return event["type"] in ("ADDED", "MODIFIED") and digest != before.get(meta["name"])


def _request_sync(plane: ControlPlane, namespace: str, name: str) -> None:
    plane.kubectl(
        "annotate",
        "adaptercatalog",
        name,
        "-n",
        namespace,
        f"{ANNOTATION_SYNC_REQUESTED}={time.time_ns()}",
        "--overwrite",
    )


@dataclass
class IndexReader:
    """The runtime's adapter index (``AdapterIndex`` over ``KubernetesIndexSource``, as a
    serving replica runs it) refreshing every 0.1 s in a thread of its own; records every
    distinct set of adapter names it ever served, and when."""

    namespace: str
    catalog: str
    seen: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    refreshes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        index = AdapterIndex(
            catalogs=[CatalogRef(name=self.catalog, namespace=self.namespace)],
            source=KubernetesIndexSource(),
            storage_refresh_seconds=3600,
        )
        try:
            while not self._stop.is_set():
                await index.refresh()
                self.refreshes += 1
                names = frozenset(record.name for record in index.records())
                if not self.seen or self.seen[-1][1] != names:
                    self.seen.append((time.monotonic(), names))
                await asyncio.sleep(0.1)
        finally:
            await index.close()

    def serves(self, names: frozenset[str]) -> bool:
        return self.current == names

    @property
    def current(self) -> frozenset[str]:
        return self.seen[-1][1] if self.seen else frozenset()

    def served_during(self, start: float, end: float) -> list[frozenset[str]]:
        """Every set served at some moment in [start, end]."""
        before = [names for at, names in self.seen if at <= start][-1:]
        return before + [names for at, names in self.seen if start < at <= end]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _index_configmaps(plane: ControlPlane, namespace: str, catalog: str) -> dict[str, Any]:
    items = get_json(plane, "configmaps", "-n", namespace, "-l", f"{LABEL_CATALOG}={catalog}")
    return {cm["metadata"]["name"]: cm for cm in items.get("items", [])}


def _digests(configmaps: dict[str, Any]) -> dict[str, str]:
    return {
        name: (cm["metadata"].get("annotations") or {}).get(ANNOTATION_INDEX_DIGEST, "")
        for name, cm in configmaps.items()
    }


def _read_index(plane: ControlPlane, namespace: str, catalog: str) -> list[str]:
    """Adapter names of the complete index (fails on a torn one), as the runtime reads it."""
    configmaps = _index_configmaps(plane, namespace, catalog)
    manifest = configmaps[manifest_name(catalog)]["data"][MANIFEST_KEY]
    shards = {
        name: cm["data"].get(SHARD_KEY, "")
        for name, cm in configmaps.items()
        if name != manifest_name(catalog)
    }
    return [record.name for record in read_index(manifest, shards)]


# ------------------------------------------------------------------ 1. API server / etcd
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_operator_and_index_reader_ride_out_a_control_plane_restart(
    plane: ControlPlane,
    operator: OperatorProcess,
    minio: MinioServer,
    reader_env: None,
    component: str,
) -> None:
    """The API server (or etcd) crashes and is back after 5 s. The operator process survives
    it; afterwards a LoRAModel edit reaches its RayService, the drift check still repairs a
    tampered RayService, and periodic catalog syncs still run. The runtime's index reader
    serves its last index throughout and then picks up a new adapter."""
    ns = _namespace(plane, "cp-" + component.split("-")[-1])
    apply_in(plane, MINIMAL, ns)
    rs = eventually(lambda: rayservice_for(plane, ns, "qwen-mini"), what="the RayService")
    bucket = Bucket(minio)
    first = sorted(f"a{i}" for i in range(3))
    bucket.add(first)
    _catalog(plane, minio, ns, "cat", bucket.uri, "5s")
    eventually(lambda: _synced_count(plane, ns, "cat") == 3, what="the first sync")
    reader = IndexReader(ns, "cat")
    reader.start()
    assert operator.proc is not None
    pid = operator.proc.pid
    try:
        eventually(lambda: reader.current == frozenset(first), what="the reader's first index")

        crashed = time.monotonic()
        if component == "etcd":
            plane.restart_etcd(down_seconds=5)
        else:
            plane.restart_apiserver(down_seconds=5)
        back = time.monotonic()
        outage = back - crashed
        # The reader kept its last index all along: a user kept being served.
        assert reader.served_during(crashed, back) == [frozenset(first)]

        # Edits made right after recovery (nothing can be written while it is down).
        _patch_max_loras(plane, ns, "qwen-mini", 12)
        edit_seconds = _timed(
            lambda: _max_loras(rayservice_for(plane, ns, "qwen-mini")) == 12,
            timeout=RECOVERY_BOUND_SECONDS,
            what="the edit made after the restart to reach the RayService",
        )
        # The drift loop survived the outage: a RayService whose labels were stripped sends
        # no event, only the drift check (every 2 s) repairs it.
        name = rs["metadata"]["name"]
        tamper_rayservice(plane, ns, name)
        drift_seconds = _timed(
            lambda: (
                get_json(plane, "rayservice", name, "-n", ns)["metadata"]["annotations"][
                    "lorafleet.dev/spec-hash"
                ]
                != "tampered"
            ),
            timeout=RECOVERY_BOUND_SECONDS,
            what="the drift check to repair the tampered RayService after the restart",
        )
        # The catalog loop survived too: a new adapter arrives with the next periodic sync
        # (no sync request), and the reader serves it.
        bucket.add(["new-after-restart"])
        catalog_seconds = _timed(
            lambda: "new-after-restart" in reader.current,
            timeout=RECOVERY_BOUND_SECONDS,
            what="the reader to serve an adapter added after the restart",
        )
        assert reader.current == frozenset([*first, "new-after-restart"])
        assert operator.proc is not None and operator.proc.pid == pid and operator.proc.alive(), (
            "the operator process did not survive the outage"
        )
        print(
            f"\n[{component} restart] outage {outage:.1f} s; after recovery: edit applied in "
            f"{edit_seconds:.1f} s, drift repaired in {drift_seconds:.1f} s, new adapter "
            f"served in {catalog_seconds:.1f} s; reader refreshes {reader.refreshes}, "
            f"index sets served {[sorted(s) for _, s in reader.seen]}"
        )
    finally:
        reader.stop()
        plane.kubectl("delete", "namespace", ns, "--wait=false")


# ------------------------------------------------------------------ 2. kill -9 mid index write
def _long_names(count: int, tag: str) -> list[str]:
    return [f"{LONG_NAME}-{tag}-{i:05d}" for i in range(count)]


def _one_per_shard(tag: str, shards: int) -> list[str]:
    """New adapter names, one landing in each shard: a sync rewrites every shard."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < shards:
        name = f"{LONG_NAME}-{tag}-{i:05d}"
        found.setdefault(shard_of(name, shards), name)
        i += 1
    return [found[s] for s in range(shards)]


def test_operator_killed_with_index_shards_half_written_converges(
    plane: ControlPlane,
    operator: OperatorProcess,
    minio: MinioServer,
    reader_env: None,
) -> None:
    """A sync that changes every shard of a four-shard index; the operator is killed -9 as
    soon as the first new shard is written (proved by the API: the manifest still the old one,
    some shards new, some old). Readers meanwhile serve the old index only (digests protect
    them); after a restart the index is exactly the new one: four shards, every adapter once."""
    ns = _namespace(plane, "cp-shards")
    bucket = Bucket(minio)
    expected = _long_names(BIG_CATALOG_ADAPTERS, "base")
    bucket.add(expected)
    _catalog(plane, minio, ns, "big", bucket.uri, "1h")
    eventually(
        lambda: _synced_count(plane, ns, "big") == len(expected), timeout=120, what="first sync"
    )
    assert sorted(_read_index(plane, ns, "big")) == sorted(expected)
    reader = IndexReader(ns, "big")
    reader.start()
    attempts: list[str] = []
    try:
        eventually(lambda: reader.current == frozenset(expected), what="the reader's index")
        for attempt in range(3):
            before = _digests(_index_configmaps(plane, ns, "big"))
            manifest_cm = manifest_name("big")
            shard_names = sorted(set(before) - {manifest_cm})
            assert len(shard_names) == BIG_CATALOG_SHARDS, f"index has shards {shard_names}"
            added = _one_per_shard(f"add{attempt}", BIG_CATALOG_SHARDS)
            bucket.add(added)
            assert operator.proc is not None
            watch = KillOnEvent(
                plane,
                f"/api/v1/namespaces/{ns}/configmaps?labelSelector={LABEL_CATALOG_INDEX_PART}%3Dshard",
                operator.proc.pid,
                functools.partial(_rewrites_a_shard, before),
            )
            watch.start()
            sync_requested = time.monotonic()
            _request_sync(plane, ns, "big")
            assert watch.done.wait(120), "no shard was rewritten"
            operator.kill9()
            killed = time.monotonic()
            # What the API holds now that nothing writes any more.
            at_kill = _index_configmaps(plane, ns, "big")
            after = _digests(at_kill)
            new_shards = [n for n in shard_names if after.get(n) != before[n]]
            manifest_unchanged = after[manifest_cm] == before[manifest_cm]
            # The manifest is the pointer readers follow: it may only ever name shards that
            # are written in full (old manifest, or a new one whose shards all match).
            pointed = parse_manifest(at_kill[manifest_cm]["data"][MANIFEST_KEY])
            assert manifest_unchanged or all(
                after.get(ref.name) == ref.digest for ref in pointed.shards
            ), "the manifest names shards that were not (yet) written: a reader sees a torn index"
            torn = manifest_unchanged and 0 < len(new_shards) < len(shard_names)
            attempts.append(
                f"attempt {attempt}: {len(new_shards)}/{len(shard_names)} shards rewritten, "
                f"manifest {'old' if manifest_unchanged else 'new'}"
            )
            expected = sorted([*expected, *added])

            restarted = time.monotonic()
            operator.start()
            eventually(
                functools.partial(_synced_count_is, plane, ns, "big", len(expected)),
                timeout=120,
                what="the restarted operator to finish the sync",
            )
            eventually(
                functools.partial(reader.serves, frozenset(expected)),
                what="the reader's new index",
            )
            converged = time.monotonic()
            # Exactly the new index: the shards the manifest names and no others; every
            # adapter exactly once; status agrees with the manifest.
            configmaps = _index_configmaps(plane, ns, "big")
            manifest = parse_manifest(configmaps[manifest_cm]["data"][MANIFEST_KEY])
            assert sorted(configmaps) == sorted(
                [manifest_cm, *(ref.name for ref in manifest.shards)]
            )
            assert len(manifest.shards) == BIG_CATALOG_SHARDS
            names = _read_index(plane, ns, "big")
            assert names == sorted(set(names)), "an adapter is in the index twice"
            assert names == expected
            status = get_json(plane, "adaptercatalog", "big", "-n", ns)["status"]
            assert status["index"]["shards"] == BIG_CATALOG_SHARDS
            assert status["index"]["digest"] == manifest.digest
            assert status["counts"]["found"] == manifest.adapters == len(expected)
            # The reader served the old index or the new one, never a mix or nothing.
            old = frozenset(n for n in expected if n not in added)
            served = reader.served_during(sync_requested, converged)
            assert set(served) <= {old, frozenset(expected)}, [len(s) for s in served]
            print(
                f"\n[kill -9 mid index write] {attempts[-1]}; recovery (restart to converged "
                f"index) {converged - restarted:.1f} s; operator down {restarted - killed:.1f} s; "
                f"reader served {[len(s) for s in served]} adapters"
            )
            if torn:
                break
        else:
            pytest.fail(f"the kill never landed mid-write: {attempts}")
    finally:
        reader.stop()
        if operator.proc is None:
            operator.start()
        plane.kubectl("delete", "namespace", ns, "--wait=false")
