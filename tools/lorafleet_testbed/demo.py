"""`make demo`: the main job on one machine, on the path a user takes on a cluster.

helm install of charts/lorafleet → the operator, run with the chart's ServiceAccount token →
`kubectl apply` of examples/demo (an AdapterCatalog in an S3 bucket, a LoRAModel) → the
operator renders the RayService → the real KubeRay operator creates the Ray pods, deploys the
Serve application to the head's dashboard and marks the RayService Ready → OpenAI calls for
the base model and two adapters.

What stands in for a cluster (:mod:`lorafleet_testbed.kuberay_cluster`): KWOK plays the
node's kubelet for pod status, and the Ray pods run as local processes, each in a network
namespace holding its pod IP; everything else is the real thing. MinIO runs inside the
cluster network at the node's address, where the operator and the Ray pods reach it.

A second `make demo` reuses what is running and only re-checks; `make demo-down` stops it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from lorafleet_testbed import kuberay_cluster, process
from lorafleet_testbed.controlplane import KUBERAY_CRD_DIR
from lorafleet_testbed.demo_content import (
    ADAPTER_PREFIX,
    ADAPTERS,
    BROKEN,
    BUCKET,
    DemoFiles,
    ask,
    build_demo_files,
    fill_bucket,
    remove_adapter,
    upload_adapter,
)
from lorafleet_testbed.kuberay_cluster import KubeRayCluster
from lorafleet_testbed.operators import ChartOperator
from lorafleet_testbed.toolchain import REPO_ROOT, cache_dir, tool

NAMESPACE: Final = "lorafleet-demo"
SYSTEM: Final = "lorafleet-system"
RELEASE: Final = "lorafleet"
MODEL: Final = "tiny"
CATALOG: Final = "demo-adapters"
# The Secret with MinIO's keys that the AdapterCatalog and the LoRAModel name.
CREDENTIALS_SECRET: Final = "demo-s3"
EXAMPLES: Final = REPO_ROOT / "examples" / "demo"
MINIO_PORT: Final = 9000
# Held back at the start: the "what to try next" step uploads it.
LATE_ADAPTER: Final = "legal"


def debug_logging() -> bool:
    """LORAFLEET_DEMO_LOG_LEVEL=debug: the operator logs at DEBUG (the chart's
    ``operator.verbose``) and so do Ray's Python loggers in the Ray pods (``RAY_LOGGER_LEVEL``).
    Tests search those logs for secrets, at the level that logs the most."""
    return os.environ.get("LORAFLEET_DEMO_LOG_LEVEL", "").lower() == "debug"


def demo_dir() -> Path:
    """Where the demo keeps its state, data and logs (LORAFLEET_DEMO_DIR overrides: tests)."""
    explicit = os.environ.get("LORAFLEET_DEMO_DIR")
    return Path(explicit) if explicit else cache_dir() / "demo"


def _state_path() -> Path:
    return demo_dir() / "demo.json"


@dataclass
class DemoState:
    cluster: dict[str, Any]
    access_key: str
    secret_key: str
    minio_port: int  # on the host (forwarded into the cluster network)
    serve_port: int  # on the host: the Serve Service's endpoint


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def wait_for(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _get(cluster: KubeRayCluster, *args: str) -> dict[str, Any]:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return dict(json.loads(result.stdout)) if result.returncode == 0 else {}


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def load() -> tuple[DemoState, KubeRayCluster] | None:
    """The running demo, if every process of it is alive."""
    path = _state_path()
    if not path.exists():
        return None
    state = DemoState(**json.loads(path.read_text()))
    cluster_state = kuberay_cluster.KubeRayClusterState.from_dict(state.cluster)
    if not kuberay_cluster.running(cluster_state):
        kuberay_cluster.stop_detached(cluster_state)
        path.unlink()
        return None
    return state, KubeRayCluster.attach(cluster_state)


def down() -> int:
    path = _state_path()
    if not path.exists():
        print("No demo is running")
        return 0
    state = DemoState(**json.loads(path.read_text()))
    kuberay_cluster.stop_detached(kuberay_cluster.KubeRayClusterState.from_dict(state.cluster))
    path.unlink()
    print("Stopped the demo (control plane, KubeRay, lorafleet operator, MinIO, Ray pods)")
    return 0


def up() -> int:
    started = time.monotonic()
    running = load()
    if running is None:
        state, cluster = _start()
    else:
        state, cluster = running
        say("The demo is already running: checking it")
    _converge(state, cluster)
    _show(state, cluster)
    print(f"\n(make demo took {time.monotonic() - started:.0f} s)")
    return 0


def _start() -> tuple[DemoState, KubeRayCluster]:
    say("Starting a cluster: etcd, kube-apiserver, controller manager, scheduler, KWOK, KubeRay")
    directory = demo_dir() / "cluster"
    if directory.exists():
        shutil.rmtree(directory)
    cluster = KubeRayCluster.start(
        directory,
        detach=True,
        # Our CRDs come with the chart, as on a cluster; KubeRay's are a prerequisite.
        crd_dirs=(KUBERAY_CRD_DIR,),
        pod_env={
            "LORAFLEET_ADAPTER_CACHE": str(demo_dir() / "adapter-cache"),
            **({"RAY_LOGGER_LEVEL": "debug"} if debug_logging() else {}),
        },
    )
    print(f"  cluster network namespace {cluster.netns.name}, node {cluster.node_ip}")
    state = DemoState(
        cluster={},
        access_key="demo-" + secrets.token_hex(4),
        secret_key=secrets.token_urlsafe(24),
        minio_port=0,
        serve_port=0,
    )
    say(f"Starting MinIO at {cluster.node_ip}:{MINIO_PORT} (inside the cluster network)")
    (demo_dir() / "minio").mkdir(parents=True, exist_ok=True)
    cluster.start_process(
        "minio",
        [
            str(tool("minio")),
            "server",
            str(demo_dir() / "minio"),
            f"--address={cluster.node_ip}:{MINIO_PORT}",
            "--quiet",
        ],
        env={
            "MINIO_ROOT_USER": state.access_key,
            "MINIO_ROOT_PASSWORD": state.secret_key,
            "MINIO_REGION": "us-east-1",
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        },
        health_url=f"http://{cluster.node_ip}:{MINIO_PORT}/minio/health/ready",
    )
    state.minio_port = cluster.forward(cluster.node_ip, MINIO_PORT)
    _save(state, cluster)
    return state, cluster


def _save(state: DemoState, cluster: KubeRayCluster) -> None:
    state.cluster = asdict(cluster.state())
    _state_path().parent.mkdir(parents=True, exist_ok=True)
    _state_path().write_text(json.dumps(asdict(state), indent=2))


def s3_client(state: DemoState) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{state.minio_port}",
        region_name="us-east-1",
        aws_access_key_id=state.access_key,
        aws_secret_access_key=state.secret_key,
    )


def files() -> DemoFiles:
    directory = demo_dir() / "files"
    if not (directory / "base").exists():
        say("Generating the tiny model and the demo's adapters (first time only)")
    return build_demo_files(directory)


def _converge(state: DemoState, cluster: KubeRayCluster) -> None:
    say("Writing the tiny model and adapters (one broken on purpose) into s3://" + BUCKET)
    count = fill_bucket(s3_client(state), files(), skip=(LATE_ADAPTER,))
    print(f"  {count} files; held back for later: {LATE_ADAPTER}")

    say(f"helm upgrade --install {RELEASE} charts/lorafleet -n {SYSTEM}")
    helm = [str(tool("helm")), f"--kubeconfig={cluster.kubeconfig}"]
    result = subprocess.run(
        [
            *helm,
            "upgrade",
            "--install",
            RELEASE,
            str(REPO_ROOT / "charts" / "lorafleet"),
            "-n",
            SYSTEM,
            "--create-namespace",
            *(["--set", "operator.verbose=true"] if debug_logging() else []),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    print("  " + " ".join(result.stdout.split()[:12]))

    if "lorafleet-operator" not in cluster.pids or not process.pid_alive(
        cluster.pids["lorafleet-operator"]
    ):
        say("Running the operator with the chart Deployment's args and ServiceAccount token")
        assert cluster.plane is not None
        operator = ChartOperator.from_deployment(
            cluster.plane, SYSTEM, RELEASE, demo_dir() / "operator", detach=True
        )
        cluster.start_process(
            operator.name,
            operator.command(),
            env=operator.environment(),
            health_url=operator.health_url(),
        )
        print("  (no kubelet runs the Deployment's pod here; this process stands in for it)")
    _save(state, cluster)

    say(f"kubectl apply -n {NAMESPACE} -f examples/demo/")
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    secret = cluster.kubectl(
        "create",
        "secret",
        "generic",
        CREDENTIALS_SECRET,
        "-n",
        NAMESPACE,
        f"--from-literal=AWS_ACCESS_KEY_ID={state.access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={state.secret_key}",
        "--dry-run=client",
        "-o",
        "json",
    ).stdout
    cluster.kubectl("apply", "-f", "-", input_text=secret)
    for name in ("adapter-catalog.yaml", "lora-model.yaml"):
        out = cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES / name)).stdout
        print("  " + out.strip())

    say("Waiting for the catalog sync, the RayService and KubeRay's Serve deployment")
    wait_for(
        lambda: (
            _condition(_get(cluster, "adaptercatalog", CATALOG, "-n", NAMESPACE), "Ready").get(
                "status"
            )
            == "True"
        ),
        "the AdapterCatalog to sync",
        timeout=120,
    )
    print("  AdapterCatalog synced")
    wait_for(
        lambda: _get(cluster, "rayservice", MODEL, "-n", NAMESPACE),
        "the RayService",
        timeout=60,
    )
    model = _get(cluster, "loramodel", MODEL, "-n", NAMESPACE)
    if _condition(model, "Ready").get("status") != "True":
        print("  RayService rendered; KubeRay is starting the Ray pods (first time: a few minutes)")

    seen: list[str] = []

    def ready() -> bool:
        model = _get(cluster, "loramodel", MODEL, "-n", NAMESPACE)
        cond = _condition(model, "Ready")
        line = (
            f"  LoRAModel Ready={cond.get('status')} ({cond.get('reason')}): {cond.get('message')}"
        )
        if not seen or seen[-1] != line:
            print(line, flush=True)
            seen.append(line)
        return cond.get("status") == "True"

    wait_for(ready, "the LoRAModel to be Ready", timeout=900)
    state.serve_port = _serve_forward(state, cluster)
    _save(state, cluster)


def _answers(port: int) -> bool:
    return port > 0 and process.http_ok(f"http://127.0.0.1:{port}/v1/models")


def _serve_forward(state: DemoState, cluster: KubeRayCluster) -> int:
    """A host port for the Serve Service: a forwarder to its first ready endpoint (a Serve
    proxy on a pod IP); the one from an earlier run is kept while it still answers."""
    if _answers(state.serve_port):
        return state.serve_port
    slices = _get(
        cluster,
        "endpointslices",
        "-n",
        NAMESPACE,
        "-l",
        f"kubernetes.io/service-name={MODEL}",
    )
    addresses = [
        address
        for item in slices.get("items", [])
        for endpoint in item.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint.get("addresses") or []
    ]
    if not addresses:
        raise RuntimeError(f"the Service {MODEL} has no ready endpoint")
    return cluster.forward(addresses[0], 8000)


def _show(state: DemoState, cluster: KubeRayCluster) -> None:
    base_url = f"http://127.0.0.1:{state.serve_port}/v1"
    say(f"OpenAI client calls ({base_url}; the tiny model's weights are random: its words")
    print("   mean nothing, that the base model and each adapter answer differently is the point)")
    for line in ask(base_url, MODEL, list(ADAPTERS)[:2]):
        print("  " + line)

    say(f"kubectl get loramodels,adaptercatalogs,rayservices -n {NAMESPACE}")
    print(cluster.kubectl("get", "loramodels,adaptercatalogs,rayservices", "-n", NAMESPACE).stdout)
    catalog = _get(cluster, "adaptercatalog", CATALOG, "-n", NAMESPACE)
    for entry in (catalog.get("status") or {}).get("invalidAdapters") or []:
        if entry.get("name") == BROKEN:
            print(f"The broken adapter {BROKEN}: {entry.get('reason')}: {entry.get('message')}")

    kubeconfig = cluster.kubeconfig
    print(
        f"""
What to try next (everything keeps running; `make demo-down` stops it):
  export KUBECONFIG={kubeconfig}
  {tool("kubectl")} get loramodel {MODEL} -n {NAMESPACE} -o yaml
  curl {base_url}/models
  curl {base_url}/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{MODEL}:support-v1", "messages": [{{"role": "user", "content": "Hi"}}]}}'
  # Publish another adapter to the bucket; the catalog syncs every 15 s, then it is served:
  .venv/bin/python -m lorafleet_testbed demo-upload {LATE_ADAPTER}
  curl {base_url}/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{MODEL}:{LATE_ADAPTER}", "messages": [{{"role": "user", "content": "Hi"}}]}}'
On a cluster, in-cluster clients call http://{MODEL}.{NAMESPACE}.svc:8000/v1 instead."""
    )


def upload(name: str, target: str | None = None) -> int:
    """Publish one of the demo's adapters to the running demo's bucket, under its own name or
    as ``target`` (a new adapter, or a new revision of one already there)."""
    running = load()
    if running is None:
        print("No demo is running (make demo starts one)")
        return 1
    state, _ = running
    demo_files = files()
    if name not in demo_files.adapters:
        print(f"unknown adapter {name!r}; the demo has {', '.join(sorted(demo_files.adapters))}")
        return 1
    target = target or name
    count = upload_adapter(s3_client(state), target, demo_files.adapters[name])
    print(f"Uploaded {count} files ({name}) to s3://{BUCKET}/{ADAPTER_PREFIX}{target}/")
    return 0


def remove(name: str) -> int:
    """Delete an adapter's folder from the running demo's bucket."""
    running = load()
    if running is None:
        print("No demo is running (make demo starts one)")
        return 1
    state, _ = running
    count = remove_adapter(s3_client(state), name)
    if count == 0:
        print(f"Nothing at s3://{BUCKET}/{ADAPTER_PREFIX}{name}/")
        return 1
    print(f"Deleted {count} files from s3://{BUCKET}/{ADAPTER_PREFIX}{name}/")
    return 0
