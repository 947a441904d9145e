"""Runtime fixtures: a real Ray Serve deployment of lorafleet's app (vLLM CPU engine, tiny
model) per module (`serve_lorafleet`), over adapters in three catalogs set up once per session:
the S3-compatible server, the GCS emulator and a local folder. Catalog indexes are published
as the operator's sync publishes them (the operator's own scan and ConfigMap rendering), and the
runtime reads them through the real API server, as in a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs_storage

from lorafleet_operator.builders import render_rayservice
from lorafleet_operator.builders.catalog_index import render_index_configmaps
from lorafleet_operator.model.adaptercatalog import AdapterCatalog
from lorafleet_operator.model.config import OperatorConfig
from lorafleet_operator.storage import StorageCredentials, scan_source
from lorafleet_testbed import process
from lorafleet_testbed.adapter_trees import tree_files, upload_gcs, upload_s3
from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.storage import FakeGcsServer, MinioServer
from lorafleet_testbed.tinymodel import TINY_MODEL_ID, build_lora_adapter, build_tiny_model

NAMESPACE = "default"
MODEL_ID = "tiny"
MAX_LORAS = 2
APP_NAME = "lorafleet"
SERVER_DEPLOYMENT = f"LoraFleetServer:{MODEL_ID}"
INGRESS_DEPLOYMENT = "LoraFleetIngress"
BUCKET = "runtime-adapters"
S3_SECRET = "runtime-minio-credentials"
LOCKED_SECRET = "locked-credentials"

# Which adapters live where. Eight servable ones in all (the 50-concurrent test uses them);
# "wide" has rank 16 (above this model's max_lora_rank 8), "broken" has no weights, "doomed"
# loses its weights in storage after the index was published (a storage failure).
S3_ADAPTERS = {"a0": 8, "a1": 8, "a2": 8, "a3": 8, "wide": 16, "doomed": 8}
GCS_ADAPTERS = {"g0": 8, "g1": 8}
LOCAL_ADAPTERS = {"l0": 8, "l1": 8, "broken": 8}
FAILURE_MEMORY_S = 6.0
RAY_DEFAULT_PORTS = frozenset({6379, 8076, 8265, 10001, 52365, 52366})
SERVABLE = ["a0", "a1", "a2", "a3", "g0", "g1", "l0", "l1"]


@dataclass
class Catalogs:
    """The three catalogs and the means to change them as a user would."""

    plane: ControlPlane
    minio: MinioServer
    gcs: FakeGcsServer
    root: Path
    base_model: Path
    local_dir: Path
    seeds: dict[str, int] = field(default_factory=dict)

    def s3(self) -> Any:
        return self.minio.s3_client()

    def gcs_bucket(self) -> Any:
        client = gcs_storage.Client(
            project="test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=self.gcs.endpoint),
        )
        return client.bucket(BUCKET)

    def build_adapter(self, name: str, seed: int, rank: int = 8) -> Path:
        folder = build_lora_adapter(
            self.base_model, self.root / "built" / f"{name}-{seed}", seed=seed, rank=rank
        )
        self.seeds[name] = seed
        return folder

    def upload_s3(self, name: str, folder: Path) -> None:
        upload_s3(self.s3(), BUCKET, f"s3-loras/{name}/", tree_files(folder))

    def specs(self) -> dict[str, dict[str, Any]]:
        common = {"baseModel": TINY_MODEL_ID}
        return {
            "s3-loras": {
                "source": {
                    "uri": f"s3://{BUCKET}/s3-loras",
                    "endpoint": self.minio.endpoint,
                    "region": self.minio.region,
                    # The runtime reads this Secret itself: its pods get no AWS_* variables.
                    "credentialsSecretRef": {"name": S3_SECRET},
                },
                **common,
            },
            "gcs-loras": {
                "source": {"uri": f"gs://{BUCKET}/gcs-loras", "endpoint": self.gcs.endpoint},
                **common,
            },
            "local-loras": {"source": {"uri": f"file://{self.local_dir}"}, **common},
            # Synced while its Secret existed; the Secret is gone before the runtime starts.
            "locked-loras": {
                "source": {
                    "uri": f"s3://{BUCKET}/locked-loras",
                    "endpoint": self.minio.endpoint,
                    "region": self.minio.region,
                    "credentialsSecretRef": {"name": LOCKED_SECRET},
                },
                **common,
            },
        }

    def create_secret(self, name: str) -> None:
        self.plane.kubectl(
            "create",
            "secret",
            "generic",
            name,
            "-n",
            NAMESPACE,
            f"--from-literal=AWS_ACCESS_KEY_ID={self.minio.access_key}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={self.minio.secret_key}",
        )

    def publish(self, name: str) -> None:
        """Scan catalog ``name`` and write its index ConfigMaps, as one operator sync does."""
        spec = self.specs()[name]
        credentials = None
        if spec["source"]["uri"].startswith("s3://"):
            credentials = StorageCredentials(
                secret_name="test/minio",
                data={
                    "AWS_ACCESS_KEY_ID": self.minio.access_key,
                    "AWS_SECRET_ACCESS_KEY": self.minio.secret_key,
                },
            )
        # The operator finds the GCS emulator the way google-cloud-storage does (no ADC here).
        gcs = self.gcs.endpoint if name == "gcs-loras" else None
        publish_catalog(self.plane, name, spec, credentials, gcs_endpoint=gcs)


# One set of catalogs per session (the storage servers and the control plane are per session):
# each module starts its own Ray and Serve over them. test_serving changes a3, adds new
# adapters and takes a Secret away and back; test_routing uses a0-a2 only.
@pytest.fixture(scope="session")
def catalogs(
    control_plane: ControlPlane,
    minio: MinioServer,
    gcs: FakeGcsServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Catalogs:
    root = tmp_path_factory.mktemp("runtime")
    cats = Catalogs(
        plane=control_plane,
        minio=minio,
        gcs=gcs,
        root=root,
        base_model=build_tiny_model(root / "base"),
        local_dir=root / "local-loras",
    )
    cats.create_secret(S3_SECRET)
    cats.create_secret(LOCKED_SECRET)
    s3 = cats.s3()
    s3.create_bucket(Bucket=BUCKET)
    seed = 100
    for name, rank in S3_ADAPTERS.items():
        seed += 1
        cats.upload_s3(name, cats.build_adapter(name, seed, rank))
    bucket = cats.gcs_bucket()
    bucket.create()
    for name, rank in GCS_ADAPTERS.items():
        seed += 1
        upload_gcs(bucket, f"gcs-loras/{name}/", tree_files(cats.build_adapter(name, seed, rank)))
    for name, rank in LOCAL_ADAPTERS.items():
        seed += 1
        shutil.copytree(cats.build_adapter(name, seed, rank), cats.local_dir / name)
    (cats.local_dir / "broken" / "adapter_model.safetensors").unlink()
    seed += 1
    upload_s3(s3, BUCKET, "locked-loras/locked/", tree_files(cats.build_adapter("locked", seed)))
    for name in cats.specs():
        cats.publish(name)
    control_plane.kubectl("delete", "secret", LOCKED_SECRET, "-n", NAMESPACE)
    # The catalog validated "doomed"; its weights vanish afterwards.
    s3.delete_object(Bucket=BUCKET, Key="s3-loras/doomed/adapter_model.safetensors")
    return cats


def cpu_lora_model() -> dict[str, Any]:
    """A LoRAModel as a user writes it, sized for vLLM's CPU build and the tiny model."""
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": "tiny", "namespace": NAMESPACE},
        "spec": {
            "modelId": MODEL_ID,
            "baseModel": {"source": "PLACEHOLDER"},
            "catalogs": [
                {"name": "gcs-loras"},
                {"name": "local-loras"},
                {"name": "locked-loras"},
                {"name": "s3-loras"},
            ],
            "engine": {
                "maxLoras": MAX_LORAS,
                "maxLoraRank": 8,
                "dtype": "float32",
                "gpuMemoryUtilization": 0.2,
                "extraArgs": {"enforce_eager": True},
            },
            "replicas": {"min": 1, "max": 1},
            "resources": {"accelerator": {"count": 0}},
        },
    }


def serve_args_from_rayservice(model: dict[str, Any]) -> dict[str, Any]:
    """The application args exactly as the operator renders them into serveConfigV2."""
    rayservice = render_rayservice(model, [], OperatorConfig())
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (application,) = serve_config["applications"]
    assert application["import_path"] == "lorafleet_runtime.app:build_app"
    args: dict[str, Any] = application["args"]
    return args


@dataclass
class Deployment:
    base_url: str
    metrics_url: str
    catalogs: Catalogs

    def server_call(self, method: str, *args: Any) -> Any:
        from ray import serve

        handle = serve.get_deployment_handle(SERVER_DEPLOYMENT, app_name=APP_NAME)
        return getattr(handle, method).remote(*args).result(timeout_s=60)

    def ingress_call(self, method: str) -> Any:
        from ray import serve

        handle = serve.get_deployment_handle(INGRESS_DEPLOYMENT, app_name=APP_NAME)
        return getattr(handle, method).remote().result(timeout_s=60)


@contextlib.contextmanager
def serve_lorafleet(
    catalogs: Catalogs,
    control_plane: ControlPlane,
    cache_dir: Path,
    *,
    spec: dict[str, Any] | None = None,
) -> Iterator[Deployment]:
    """Ray + Serve + lorafleet's app for ``cpu_lora_model()`` (its spec updated with
    ``spec``), as the operator renders it; shut down on exit."""
    import ray
    from ray import serve

    from lorafleet_runtime.app import build_app

    model = cpu_lora_model()
    model["spec"]["baseModel"]["source"] = f"file://{catalogs.base_model}"
    model["spec"].update(spec or {})
    args = serve_args_from_rayservice(model)
    http_port = process.free_port()
    metrics_port = process.free_port()
    while metrics_port in RAY_DEFAULT_PORTS:  # Ray's agent takes its default port later
        metrics_port = process.free_port()
    env = {
        "KUBECONFIG": str(control_plane.kubeconfig),
        # No AWS_* keys: S3 downloads use the catalog's credentialsSecretRef.
        "LORAFLEET_ADAPTER_CACHE": str(cache_dir),
    }
    # Short, so the failure-memory test does not wait long (the operator leaves it unset).
    args["failure_memory_s"] = FAILURE_MEMORY_S
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        runtime_env={"env_vars": env},
        _metrics_export_port=metrics_port,
        _temp_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"ray-{secrets.token_hex(3)}"),
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")
        yield Deployment(
            base_url=f"http://127.0.0.1:{http_port}/v1",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            catalogs=catalogs,
        )
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def deployment(
    catalogs: Catalogs, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    with serve_lorafleet(
        catalogs, control_plane, tmp_path_factory.mktemp("adapter-cache")
    ) as served:
        yield served


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check()`` every second until it returns something truthy; return it, or fail
    saying ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


def publish_catalog(
    plane: ControlPlane,
    name: str,
    spec: dict[str, Any],
    credentials: StorageCredentials | None,
    *,
    gcs_endpoint: str | None = None,
) -> None:
    """Apply AdapterCatalog ``name`` and write its index ConfigMaps from a real scan of its
    storage, as one operator sync does (the runtime tests run no operator)."""
    obj = {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "AdapterCatalog",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }
    plane.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(obj))
    live = json.loads(
        plane.kubectl("get", "adaptercatalog", name, "-n", NAMESPACE, "-o", "json").stdout
    )
    catalog = AdapterCatalog.from_object(live)
    if gcs_endpoint is not None:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs_endpoint
    try:
        records = asyncio.run(scan_source(catalog.spec, credentials)).records
    finally:
        if gcs_endpoint is not None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
    rendered = render_index_configmaps(catalog, records, "test")
    plane.kubectl(
        "apply",
        "--server-side",
        "--field-manager=test-catalog-sync",
        "--force-conflicts",
        "-f",
        "-",
        input_text=yaml.safe_dump_all([*rendered.shard_configmaps, rendered.manifest_configmap]),
    )
