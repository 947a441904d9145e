"""The runtime's index reader against the real API server: a catalog's storage options come
from its AdapterCatalog and Secret, and when either cannot be read nothing is downloaded
(never the pod's own credentials instead)."""

from __future__ import annotations

import asyncio
import base64
import secrets

import pytest
import yaml

from lorafleet_api.catalog_index import AdapterFile, AdapterRecord
from lorafleet_api.contract import CatalogRef
from lorafleet_api.names import API_GROUP_VERSION
from lorafleet_api.storage import ACCESS_DENIED, CATALOG_UNAVAILABLE
from lorafleet_operator.builders import render_index_configmaps
from lorafleet_operator.model.adaptercatalog import AdapterCatalog
from lorafleet_runtime.adapters.index import AdapterIndex, KubernetesIndexSource
from lorafleet_runtime.adapters.remote_files import (
    AdapterStorageError,
    CatalogStorage,
    open_file_source,
)
from lorafleet_testbed.controlplane import ControlPlane

CATALOG = "gone"
SECRET = "s3-keys"
RECORD = AdapterRecord(
    name="support",
    uri="s3://bucket/loras/support/",
    revision="1",
    valid=True,
    rank=8,
    files=(AdapterFile(name="adapter_config.json", size=10),),
)


def _catalog_object(namespace: str) -> dict[str, object]:
    return {
        "apiVersion": API_GROUP_VERSION,
        "kind": "AdapterCatalog",
        "metadata": {"name": CATALOG, "namespace": namespace},
        "spec": {
            "source": {
                "uri": "s3://bucket/loras",
                "endpoint": "http://127.0.0.1:9",
                "credentialsSecretRef": {"name": SECRET},
            }
        },
    }


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    name = "index-" + secrets.token_hex(3)
    control_plane.kubectl("create", "namespace", name)
    # The index as a sync leaves it, but no AdapterCatalog: deleted with its index not yet
    # collected, or not served under the version the runtime asks for.
    catalog = AdapterCatalog.from_object(_catalog_object(name))
    rendered = render_index_configmaps(catalog, [RECORD], "test")
    documents = [*rendered.shard_configmaps, rendered.manifest_configmap]
    control_plane.kubectl(
        "apply", "--server-side", "-f", "-", input_text=yaml.safe_dump_all(documents)
    )
    return name


async def _storage(index: AdapterIndex) -> CatalogStorage:
    await index.refresh()
    found = index.lookup("support")
    assert found is not None, "the index ConfigMaps were not read"
    return found[1]


def test_a_catalog_that_cannot_be_read_fails_closed_then_recovers(
    control_plane: ControlPlane, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    # Credentials the pod would have: they must not be used for this catalog.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPODCREDENTIALS")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pod-secret-value")
    # One event loop for the whole story: the API client lives on it.
    asyncio.run(_scenario(control_plane, namespace))


async def _scenario(control_plane: ControlPlane, namespace: str) -> None:
    index = AdapterIndex(
        catalogs=[CatalogRef(name=CATALOG, namespace=namespace)],
        source=KubernetesIndexSource(),
        storage_refresh_seconds=0.0,
    )
    try:
        storage = await _storage(index)
        assert storage.unavailable is not None
        assert storage.unavailable.reason == CATALOG_UNAVAILABLE
        with pytest.raises(AdapterStorageError) as caught:
            open_file_source(storage)
        assert caught.value.reason == CATALOG_UNAVAILABLE
        assert f"AdapterCatalog {namespace}/{CATALOG} does not exist" in caught.value.message
        assert "pod-secret-value" not in caught.value.message

        # The catalog is back, naming a Secret that does not exist yet: still nothing opened.
        control_plane.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input_text=yaml.safe_dump(_catalog_object(namespace)),
        )
        storage = await _storage(index)
        assert storage.unavailable is not None
        assert storage.unavailable.reason == ACCESS_DENIED
        message = storage.unavailable.message
        assert f"credentials Secret {namespace}/{SECRET} does not exist" in message

        # With the Secret, its keys (and only those) are the storage's credentials.
        keys = {"AWS_ACCESS_KEY_ID": "AKIDSECRETKEYS", "AWS_SECRET_ACCESS_KEY": "secret-value"}
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
        }
        control_plane.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(secret))
        storage = await _storage(index)
        assert storage.unavailable is None
        assert storage.endpoint == "http://127.0.0.1:9"
        assert storage.credentials is not None
        assert storage.credentials.s3_keys()["aws_access_key_id"] == "AKIDSECRETKEYS"
    finally:
        await index.close()
