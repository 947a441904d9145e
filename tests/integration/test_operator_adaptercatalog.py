"""A user applies an AdapterCatalog pointing at a bucket and the operator, running against a
real API server and a real S3-compatible server, keeps a validated index and honest status:
changes in the bucket show up after a sync request or the next period, faults keep the last
good index, LoRAModels follow the catalog without their RayService being rewritten."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lorafleet_api.catalog_index import (
    MANIFEST_KEY,
    SHARD_KEY,
    IndexFormatError,
    manifest_name,
    read_index,
)
from lorafleet_api.names import ANNOTATION_SYNC_REQUESTED, LABEL_CATALOG
from lorafleet_testbed.adapter_trees import (
    ENGINE_SPECIFIC_ADAPTERS,
    MAX_ADAPTER_SIZE,
    TINY_MODEL_ID,
    build_real_adapters,
    tree_files,
    upload_s3,
    write_catalog_tree,
)
from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.storage import MinioServer

from .conftest import OperatorProcess, condition, eventually, get_json

NAMESPACE = "catalogs"
CATALOG = "support"
SYNC_INTERVAL = "8s"
WRONG_SECRET = "wrong-" + secrets.token_urlsafe(18)


class Bucket:
    """The catalog's bucket, as a user edits it with the S3 API."""

    def __init__(self, minio: MinioServer, tree: Path, expected: dict[str, str | None]) -> None:
        self.client: Any = minio.s3_client()
        self.name = "adapters-" + secrets.token_hex(4)
        self.prefix = "loras/tiny/"
        self.tree = tree
        self.expected = dict(expected)
        self.client.create_bucket(Bucket=self.name)
        upload_s3(self.client, self.name, self.prefix, tree_files(tree))

    @property
    def uri(self) -> str:
        return f"s3://{self.name}/{self.prefix.rstrip('/')}"

    def copy_adapter(self, source: str, target: str, **config_changes: Any) -> None:
        for key, path in tree_files(self.tree / source):
            body = path.read_bytes()
            if key == "adapter_config.json" and config_changes:
                body = json.dumps({**json.loads(body), **config_changes}).encode()
            self.client.put_object(Bucket=self.name, Key=f"{self.prefix}{target}/{key}", Body=body)

    def delete_adapter(self, name: str) -> None:
        listed = self.client.list_objects_v2(Bucket=self.name, Prefix=f"{self.prefix}{name}/")
        for entry in listed.get("Contents", []):
            self.client.delete_object(Bucket=self.name, Key=entry["Key"])


@dataclass(frozen=True)
class Tree:
    """The catalog's files on disk (built once per module) and the expected reason per adapter."""

    root: Path
    expected: dict[str, str | None]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    adapters = build_real_adapters(tmp_path_factory.getbasetemp() / "tiny-lora")
    root = tmp_path_factory.mktemp("operator-catalog") / "loras"
    return Tree(root, write_catalog_tree(root, adapters))


@pytest.fixture(scope="module")
def namespace(control_plane: ControlPlane) -> str:
    control_plane.kubectl("create", "namespace", NAMESPACE)
    return NAMESPACE


@pytest.fixture
def bucket(minio: MinioServer, tree: Tree, namespace: str) -> Bucket:
    """A bucket of this test's own, filled with the module's tree: what one test adds, changes
    or deletes is never seen by another."""
    return Bucket(minio, tree.root, tree.expected)


def _synced_catalog(
    plane: ControlPlane, minio: MinioServer, bucket: Bucket, name: str
) -> dict[str, Any]:
    """Credentials Secret ``<name>-credentials`` and catalog ``name`` on ``bucket``, Ready."""
    _secret(plane, minio, minio.secret_key, name=f"{name}-credentials")
    _apply(plane, _catalog_manifest(bucket.uri, minio.endpoint, name=name))
    return _wait_ready(plane, name)


def _apply(plane: ControlPlane, obj: dict[str, Any], *, check: bool = True) -> Any:
    return plane.kubectl(
        "apply", "-n", NAMESPACE, "-f", "-", input_text=json.dumps(obj), check=check
    )


def _secret(plane: ControlPlane, minio: MinioServer, secret_key: str, *, name: str) -> None:
    data = {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    _apply(
        plane,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        },
    )


def _catalog_manifest(uri: str, endpoint: str, name: str = CATALOG) -> dict[str, Any]:
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "AdapterCatalog",
        "metadata": {"name": name},
        "spec": {
            "source": {
                "uri": uri,
                "endpoint": endpoint,
                "credentialsSecretRef": {"name": f"{name}-credentials"},
            },
            "baseModel": TINY_MODEL_ID,
            "syncInterval": SYNC_INTERVAL,
            "maxAdapterSize": MAX_ADAPTER_SIZE,
        },
    }


def _catalog(plane: ControlPlane, name: str = CATALOG) -> dict[str, Any]:
    return get_json(plane, "adaptercatalogs", name, "-n", NAMESPACE)


def _request_sync(plane: ControlPlane, name: str = CATALOG) -> None:
    plane.kubectl(
        "annotate",
        "adaptercatalog",
        name,
        "-n",
        NAMESPACE,
        f"{ANNOTATION_SYNC_REQUESTED}={time.time_ns()}",
        "--overwrite",
    )


def _index(plane: ControlPlane, name: str = CATALOG) -> dict[str, Any]:
    """The index as the runtime will read it: {adapter: record}."""
    items = get_json(plane, "configmaps", "-n", NAMESPACE, "-l", f"{LABEL_CATALOG}={name}")
    data = {cm["metadata"]["name"]: cm.get("data", {}) for cm in items.get("items", [])}
    manifest = data.pop(manifest_name(name), {}).get(MANIFEST_KEY)
    if manifest is None:
        return {}
    shards = {cm: d.get(SHARD_KEY, "") for cm, d in data.items()}
    return {record.name: record for record in read_index(manifest, shards)}


def _wait_ready(plane: ControlPlane, name: str, timeout: float = 90) -> dict[str, Any]:
    """Catalog ``name`` once Ready (reason Synced); on a timeout, fail showing its conditions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready := _ready(plane, name=name):
            return ready
        time.sleep(0.5)
    status = _catalog(plane, name).get("status", {})
    pytest.fail(f"{name} not Ready after {timeout:.0f} s: {status.get('conditions')}")


def _events(plane: ControlPlane, name: str = CATALOG) -> list[dict[str, Any]]:
    found = get_json(
        plane, "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={name}"
    )
    return list(found.get("items", []))


def _event_messages(plane: ControlPlane, reason: str, name: str = CATALOG) -> list[str]:
    return [e.get("message", "") for e in _events(plane, name) if e.get("reason") == reason]


def _ready(plane: ControlPlane, reason: str = "Synced", name: str = CATALOG) -> dict[str, Any]:
    catalog = _catalog(plane, name)
    ready = condition(catalog, "Ready")
    return catalog if ready.get("reason") == reason else {}


def test_the_api_server_refuses_catalogs_with_an_unsupported_uri_or_a_dotted_name(
    control_plane: ControlPlane, namespace: str
) -> None:
    bad_uri = _catalog_manifest("http://bucket/loras", "http://127.0.0.1:9", name="bad-uri")
    refused = _apply(control_plane, bad_uri, check=False)
    assert refused.returncode != 0
    assert "source.uri must start with s3://, gs:// or file:///" in refused.stderr
    dotted = _catalog_manifest("s3://bucket/loras", "http://127.0.0.1:9", name="a.b")
    refused = _apply(control_plane, dotted, check=False)
    assert refused.returncode != 0
    assert "DNS-1123 label" in refused.stderr
    local_with_secret = _catalog_manifest("file:///mnt/x", "http://127.0.0.1:9", name="pvc")
    refused = _apply(control_plane, local_with_secret, check=False)
    assert "for s3:// and gs:// sources only" in refused.stderr


def test_a_catalog_syncs_into_status_and_an_owned_index(
    control_plane: ControlPlane,
    namespace: str,
    minio: MinioServer,
    bucket: Bucket,
    lorafleet_operator: OperatorProcess,
) -> None:
    catalog = _synced_catalog(control_plane, minio, bucket, CATALOG)
    status = catalog["status"]
    valid = sorted(n for n, r in bucket.expected.items() if r is None)
    invalid = {n: r for n, r in bucket.expected.items() if r is not None}
    assert status["counts"]["found"] == len(bucket.expected)
    assert status["counts"]["valid"] == len(valid)
    assert status["counts"]["invalid"] == len(invalid)
    assert status["counts"]["strayFiles"] == 2
    # Adapters vLLM refuses are valid, listed with the reason, and left out of the histogram
    # (vLLM's rank limit) and vLLM's count.
    assert status["rankHistogram"] == {"8": 2, "16": 1}
    assert status["counts"]["servable"] == {
        kind: len(valid) - sum(kind in refused for refused in ENGINE_SPECIFIC_ADAPTERS.values())
        for kind in ("vllm", "peft")
    }
    assert [a["name"] for a in status["adapters"]] == valid
    assert {
        a["name"]: a["refusedBy"] for a in status["adapters"] if "refusedBy" in a
    } == ENGINE_SPECIFIC_ADAPTERS
    assert {a["name"]: a["reason"] for a in status["invalidAdapters"]} == invalid
    assert status["observedGeneration"] == catalog["metadata"]["generation"]
    assert condition(catalog, "Synced")["status"] == "True"

    index = _index(control_plane)
    assert {name: record.reason for name, record in index.items()} == bucket.expected
    assert index["support-v2"].rank == 16
    assert index["modules-to-save"].modules_to_save == ("lm_head",)
    assert index["dora"].variant == "dora"
    assert index["support-v2"].uri == f"{bucket.uri}/support-v2/"
    assert status["index"]["configMap"] == manifest_name(CATALOG)
    configmaps = get_json(
        control_plane, "configmaps", "-n", NAMESPACE, "-l", f"{LABEL_CATALOG}={CATALOG}"
    )["items"]
    for cm in configmaps:
        (owner,) = cm["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("AdapterCatalog", catalog["metadata"]["uid"])

    added = eventually(lambda: _event_messages(control_plane, "AdaptersAdded"), what="event")
    assert f"Added {len(bucket.expected)} adapters" in added[0]

    table = control_plane.kubectl("get", "adaptercatalogs", "-n", NAMESPACE).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "READY", "ADAPTERS", "VALID", "INVALID"]
    assert row.split()[:5] == [
        CATALOG,
        "True",
        str(len(bucket.expected)),
        str(len(valid)),
        str(len(invalid)),
    ]


def _loramodel(
    max_lora_rank: int | None, kind: str | None = None, catalog: str = CATALOG
) -> dict[str, Any]:
    engine: dict[str, Any] = {"maxLoraRank": max_lora_rank} if max_lora_rank else {}
    if kind is not None:
        engine["kind"] = kind
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": f"tiny-{kind}" if kind else f"tiny-r{max_lora_rank or 'auto'}"},
        "spec": {
            "baseModel": {"source": TINY_MODEL_ID},
            "catalogs": [{"name": catalog}],
            "engine": engine,
        },
    }


def _rayservice(plane: ControlPlane, model: str) -> dict[str, Any]:
    items = get_json(
        plane, "rayservices", "-n", NAMESPACE, "-l", f"lorafleet.dev/loramodel={model}"
    ).get("items", [])
    return items[0] if len(items) == 1 else {}


def _served(plane: ControlPlane, model: str, served: int) -> dict[str, Any]:
    obj = get_json(plane, "loramodels", model, "-n", NAMESPACE)
    adapters = obj.get("status", {}).get("adapters", {})
    return obj if adapters.get("served") == served else {}


def test_adds_changes_and_removals_show_up_after_a_sync_request_with_events(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: Bucket,
    lorafleet_operator: OperatorProcess,
) -> None:
    name = "changes"
    _synced_catalog(control_plane, minio, bucket, name)
    # Three LoRAModels follow the catalog: one with an explicit rank limit of 8 (support-v2,
    # rank 16, is incompatible), one whose limit follows the catalog (16: every adapter vLLM
    # can serve fits), both vLLM, which refuses dora and modules-to-save; and a PEFT one,
    # which serves modules-to-save and refuses dora.
    for model in (
        _loramodel(8, catalog=name),
        _loramodel(None, catalog=name),
        _loramodel(None, kind="peft", catalog=name),
    ):
        _apply(control_plane, model)
    limited = eventually(lambda: _served(control_plane, "tiny-r8", 2), what="2 served")
    assert limited["status"]["adapters"]["incompatible"] == 3
    assert limited["status"]["adapters"]["incompatibleNames"] == [
        "dora",
        "modules-to-save",
        "support-v2",
    ]
    auto = eventually(lambda: _served(control_plane, "tiny-rauto", 3), what="3 served")
    assert auto["status"]["maxLoraRank"] == 16
    assert auto["status"]["adapters"]["incompatibleNames"] == ["dora", "modules-to-save"]
    peft = eventually(lambda: _served(control_plane, "tiny-peft", 4), what="4 served by peft")
    assert peft["status"]["adapters"]["incompatible"] == 1
    assert peft["status"]["adapters"]["incompatibleNames"] == ["dora"]
    before = {m: _rayservice(control_plane, m) for m in ("tiny-r8", "tiny-rauto")}
    assert all(before.values())

    bucket.copy_adapter("support-v1", "new-adapter")  # added, rank 8
    bucket.copy_adapter("billing", "billing", lora_alpha=64)  # re-uploaded: new revision
    bucket.delete_adapter("dora")  # one no engine serves goes away
    _request_sync(control_plane, name)

    eventually(
        lambda: "new-adapter" in (index := _index(control_plane, name)) and "dora" not in index,
        what="index with the new adapter and without the removed one",
    )
    index = _index(control_plane, name)
    assert index["billing"].alpha == 64.0
    eventually(
        lambda: (
            "Added 1 adapter: new-adapter" in _event_messages(control_plane, "AdaptersAdded", name)
        ),
        what="AdaptersAdded event",
    )
    assert "Changed (new revision) 1 adapter: billing" in _event_messages(
        control_plane, "AdaptersChanged", name
    )
    assert "Removed 1 adapter: dora" in _event_messages(control_plane, "AdaptersRemoved", name)

    # The LoRAModels count the new adapter; their RayServices are not touched: adapters
    # never change rayClusterConfig or serveConfigV2 (the rank bucket did not move).
    eventually(lambda: _served(control_plane, "tiny-r8", 3), what="3 served with rank 8")
    eventually(lambda: _served(control_plane, "tiny-rauto", 4), what="4 served")
    peft = eventually(lambda: _served(control_plane, "tiny-peft", 5), what="5 served by peft")
    assert peft["status"]["adapters"]["incompatible"] == 0
    for model, old in before.items():
        new = _rayservice(control_plane, model)
        assert new["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"]
        assert new["spec"]["serveConfigV2"] == old["spec"]["serveConfigV2"]


def test_without_a_request_the_next_period_picks_changes_up(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: Bucket,
    lorafleet_operator: OperatorProcess,
) -> None:
    _synced_catalog(control_plane, minio, bucket, "periodic")
    assert "periodic-adapter" not in _index(control_plane, "periodic")
    bucket.copy_adapter("support-v2", "periodic-adapter")
    started = time.monotonic()
    eventually(
        lambda: "periodic-adapter" in _index(control_plane, "periodic"),
        timeout=45,
        what="the periodic sync",
    )
    assert time.monotonic() - started < 30  # syncInterval 8s plus the loop's tick


def test_a_deleted_index_configmap_is_restored_by_the_next_sync(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: Bucket,
    lorafleet_operator: OperatorProcess,
) -> None:
    name = "restored"
    _synced_catalog(control_plane, minio, bucket, name)
    before = _index(control_plane, name)
    assert {n: r.reason for n, r in before.items()} == bucket.expected
    control_plane.kubectl("delete", "configmap", manifest_name(name) + ".0", "-n", NAMESPACE)
    with pytest.raises(IndexFormatError):
        _index(control_plane, name)  # the deletion really broke the index

    def restored() -> bool:
        try:
            return _index(control_plane, name) == before
        except IndexFormatError:
            return False  # a shard is missing until the sync writes it again

    _request_sync(control_plane, name)
    eventually(restored, what="the deleted shard written again")


def test_an_outage_keeps_the_last_good_index_and_recovers(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: Bucket,
    lorafleet_operator: OperatorProcess,
) -> None:
    name = "outage"
    good = _synced_catalog(control_plane, minio, bucket, name)
    _apply(control_plane, {**_loramodel(None, catalog=name), "metadata": {"name": "outage"}})
    served = eventually(
        lambda: (
            (m := get_json(control_plane, "loramodels", "outage", "-n", NAMESPACE))
            and m.get("status", {}).get("adapters", {}).get("served")
            and m
        ),
        what="the LoRAModel serving the catalog's adapters",
    )
    index_before = _index(control_plane, name)
    minio.stop()
    try:
        down = eventually(
            lambda: _ready(control_plane, "StorageUnreachable", name),
            timeout=60,
            what="unreachable",
        )
        assert condition(down, "Ready")["status"] == "False"
        assert condition(down, "Synced")["status"] == "False"
        assert down["status"]["counts"] == good["status"]["counts"]
        assert _index(control_plane, name) == index_before  # nothing lost
        model = get_json(control_plane, "loramodels", "outage", "-n", NAMESPACE)
        assert model["status"]["adapters"] == served["status"]["adapters"]
    finally:
        minio.start()
    eventually(lambda: _ready(control_plane, name=name), timeout=90, what="recovery")


def test_wrong_credentials_are_access_denied_until_fixed(
    control_plane: ControlPlane,
    minio: MinioServer,
    bucket: Bucket,
    lorafleet_operator: OperatorProcess,
) -> None:
    name = "denied"
    _synced_catalog(control_plane, minio, bucket, name)
    _secret(control_plane, minio, WRONG_SECRET, name=f"{name}-credentials")
    _request_sync(control_plane, name)
    denied = eventually(lambda: _ready(control_plane, "AccessDenied", name), what="AccessDenied")
    assert "SignatureDoesNotMatch" in condition(denied, "Ready")["message"]
    assert denied["status"]["counts"]["valid"] > 0  # the last good sync stays
    _secret(control_plane, minio, minio.secret_key, name=f"{name}-credentials")
    _request_sync(control_plane, name)
    eventually(lambda: _ready(control_plane, name=name), what="Ready again with the right secret")

    # Nothing the operator wrote or logged in that flow holds either key. The texts are
    # not empty: they record the denial, so the search covers the failure path too.
    texts = {
        "status": json.dumps(_catalog(control_plane, name)),
        "events": json.dumps(_events(control_plane, name)),
        "log": lorafleet_operator.log_text(),
        "configmaps": json.dumps(get_json(control_plane, "configmaps", "-n", NAMESPACE)),
    }
    assert "AccessDenied" in texts["events"] + texts["status"]
    assert name in texts["log"]
    assert manifest_name(name) in texts["configmaps"]
    for what, text in texts.items():
        assert minio.secret_key not in text, what
        assert WRONG_SECRET not in text, what


def _mounted_catalog(plane: ControlPlane, tree: Tree, name: str, copy: Path) -> dict[str, Any]:
    """A file:// catalog on a copy of the module's tree (the test may change it)."""
    shutil.copytree(tree.root, copy, symlinks=True)
    _apply(
        plane,
        {
            "apiVersion": "lorafleet.dev/v1alpha1",
            "kind": "AdapterCatalog",
            "metadata": {"name": name},
            "spec": {
                "source": {"uri": f"file://{copy}"},
                "baseModel": TINY_MODEL_ID,
                "maxAdapterSize": MAX_ADAPTER_SIZE,
            },
        },
    )
    return _wait_ready(plane, name)


def test_a_mounted_folder_catalog_works_without_credentials(
    control_plane: ControlPlane,
    namespace: str,
    tree: Tree,
    tmp_path: Path,
    lorafleet_operator: OperatorProcess,
) -> None:
    catalog = _mounted_catalog(control_plane, tree, "pvc", tmp_path / "loras")
    assert "credentialsSecretRef" not in catalog["spec"]["source"]
    assert catalog["status"]["counts"]["found"] == len(tree.expected)
    assert {n: r.reason for n, r in _index(control_plane, "pvc").items()} == tree.expected


def test_deleting_a_catalog_garbage_collects_its_index(
    control_plane: ControlPlane,
    namespace: str,
    tree: Tree,
    tmp_path: Path,
    lorafleet_operator: OperatorProcess,
) -> None:
    _mounted_catalog(control_plane, tree, "doomed", tmp_path / "loras")
    assert _index(control_plane, "doomed")
    control_plane.kubectl("delete", "adaptercatalog", "doomed", "-n", NAMESPACE)
    eventually(
        lambda: (
            not get_json(
                control_plane, "configmaps", "-n", NAMESPACE, "-l", f"{LABEL_CATALOG}=doomed"
            ).get("items")
        ),
        timeout=60,
        what="index ConfigMaps garbage-collected",
    )
