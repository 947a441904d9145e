"""`make demo` as a user runs it (`python -m lorafleet_testbed demo`), on the path it walks:
helm install of the chart, the operator with the chart's ServiceAccount token, kubectl apply of
examples/demo, the real KubeRay deploying the Serve application on Ray pods, then OpenAI calls
for the base model and adapters. Then what a user does next: run it again (nothing changes),
publish an adapter to the bucket (it is served, the RayService is not written), `demo-down`
(nothing is left)."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lorafleet_api import names
from lorafleet_runtime.adapters.index import STORAGE_REFRESH_SECONDS
from lorafleet_testbed import netns, process
from lorafleet_testbed.demo import CATALOG, CREDENTIALS_SECRET, EXAMPLES, NAMESPACE
from lorafleet_testbed.toolchain import tool

from .conftest import eventually, require_namespaces


@dataclass
class Demo:
    directory: Path
    output: str

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lorafleet_testbed", *args],
            capture_output=True,
            text=True,
            # At DEBUG: the secrets test searches the logs that say the most.
            env=dict(
                os.environ, LORAFLEET_DEMO_DIR=str(self.directory), LORAFLEET_DEMO_LOG_LEVEL="debug"
            ),
            timeout=timeout,
            check=False,
        )

    @property
    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.directory / "demo.json").read_text()))

    def kubectl(self, *args: str) -> Any:
        kubeconfig = self.state["cluster"]["kubeconfig"]
        out = subprocess.run(
            [str(tool("kubectl")), f"--kubeconfig={kubeconfig}", *args, "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return json.loads(out)

    def kubectl_ok(self, *args: str, input_text: str | None = None) -> None:
        kubeconfig = self.state["cluster"]["kubeconfig"]
        subprocess.run(
            [str(tool("kubectl")), f"--kubeconfig={kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl_ok("apply", "-f", "-", input_text=json.dumps(manifest))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.state['serve_port']}/v1"


def _models(base_url: str) -> list[str]:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
    return sorted(model.id for model in client.models.list().data)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    require_namespaces()
    directory = tmp_path_factory.mktemp("demo")
    demo = Demo(directory, "")
    try:
        # Inside the try: a start cut short (a timeout) is stopped too.
        # Slow where the 2 cores are shared: the first start took over 900 s at load 50.
        result = demo.run("demo", timeout=1800)
        demo.output = result.stdout
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield demo
    finally:
        state = demo.state if (directory / "demo.json").exists() else None
        down = demo.run("demo-down", timeout=180)
        assert down.returncode == 0, down.stderr
        if state is not None:
            # Nothing left: no process, no network namespace of the demo's.
            pids = state["cluster"]["pids"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(process.pid_alive(p) for p in pids.values()):
                time.sleep(0.5)
            assert not [name for name, pid in pids.items() if process.pid_alive(pid)]
            assert state["cluster"]["netns"] not in [ns.name for ns in netns.namespaces()]


def test_the_demo_answers_for_the_base_model_and_two_adapters(demo: Demo) -> None:
    out = demo.output
    assert "helm upgrade --install lorafleet charts/lorafleet" in out
    assert "LoRAModel Ready=True (Serving)" in out
    assert "GET /v1/models -> tiny, tiny:billing, tiny:support-v1" in out
    assert "tiny (12 tokens):" in out
    assert "tiny:support-v1 (12 tokens):" in out
    assert "tiny:billing (streamed," in out
    # kubectl get shows the three kinds, and the broken adapter's reason is printed.
    assert "loramodel.lorafleet.dev/tiny   True" in out
    assert "rayservice.ray.io/tiny" in out
    assert "The broken adapter wrong-base: BaseModelMismatch" in out
    assert "What to try next" in out and demo.base_url in out


def test_the_path_is_the_real_one(demo: Demo) -> None:
    """The chart's Deployment and RBAC exist, the operator runs on the chart's identity, and
    KubeRay, not a stand-in, deployed the Serve application."""
    deployment = demo.kubectl("get", "deployment", "lorafleet", "-n", "lorafleet-system")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "lorafleet"
    rayservice = demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo")
    status = rayservice["status"]
    assert status["serviceStatus"] == "Running"
    assert status["numServeEndpoints"] >= 1
    apps = status["activeServiceStatus"]["applicationStatuses"]
    assert apps["lorafleet"]["status"] == "RUNNING"
    token = (demo.directory / "operator" / "operator-token.kubeconfig").read_text()
    assert "token:" in token and "client-certificate" not in token
    pods = demo.kubectl("get", "pods", "-n", "lorafleet-demo")["items"]
    assert {p["spec"]["serviceAccountName"] for p in pods} == {"tiny-runtime"}


def test_a_second_demo_changes_nothing(demo: Demo) -> None:
    before = demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo")["metadata"]
    pids = dict(demo.state["cluster"]["pids"])
    again = demo.run("demo")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "already running" in again.stdout
    assert "GET /v1/models -> tiny, tiny:billing, tiny:support-v1" in again.stdout
    after = demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo")["metadata"]
    assert after["resourceVersion"] == before["resourceVersion"]
    assert {k: v for k, v in demo.state["cluster"]["pids"].items() if k in pids} == pids


def test_an_adapter_published_to_the_bucket_is_served_without_a_rayservice_write(
    demo: Demo,
) -> None:
    before = demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo")["metadata"]
    assert "tiny:legal" not in _models(demo.base_url)
    upload = demo.run("demo-upload", "legal", timeout=120)
    assert upload.returncode == 0, upload.stdout + upload.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "tiny:legal" not in _models(demo.base_url):
        time.sleep(2)
    assert "tiny:legal" in _models(demo.base_url)
    catalog = demo.kubectl("get", "adaptercatalog", "demo-adapters", "-n", "lorafleet-demo")
    assert "legal" in [a["name"] for a in catalog["status"]["adapters"]]

    from openai import OpenAI

    client = OpenAI(base_url=demo.base_url, api_key="unused", max_retries=1, timeout=120)
    reply = client.chat.completions.create(
        model="tiny:legal",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        temperature=0,
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    after = demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo")["metadata"]
    assert (after["generation"], after["resourceVersion"]) == (
        before["generation"],
        before["resourceVersion"],
    )


def test_the_router_policy_of_the_loramodel_is_in_effect(demo: Demo) -> None:
    """What Ray Serve itself runs, asked from its dashboard on the head (through the API
    server's service proxy, as KubeRay reaches it): the LLM deployment routes with lorafleet's
    router and the LoRAModel's policy."""
    model = demo.kubectl("get", "loramodel", "tiny", "-n", "lorafleet-demo")
    assert model["spec"]["router"]["policy"] == "lorafleet"
    server = _llm_deployment(demo)
    router = server["deployment_config"]["request_router_config"]
    assert router["request_router_class"] == (
        "lorafleet_runtime.router.serve:LoraFleetRequestRouter"
    )
    assert router["request_router_kwargs"]["policy"] == "lorafleet"


def _completion(base_url: str, model: str) -> str:
    """The greedy text of one completion: the same weights always give the same text."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=1, timeout=120)
    reply = client.completions.create(
        model=model, prompt="How do I reset my password?", max_tokens=12, temperature=0, seed=1
    )
    return reply.choices[0].text


def _revision(base_url: str, model: str) -> str | None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
    for card in client.models.list().data:
        if card.id == model:
            return str(getattr(card, "revision", "") or "-")
    return None


def test_a_new_revision_of_an_adapter_serves_its_new_weights(demo: Demo) -> None:
    """A user overwrites an adapter's files in the bucket: the runtime serves the new weights
    (no restart, no RayService write). The adapter `revised` is first published with
    support-v1's weights, then with billing's: its greedy answers follow, exactly."""
    url = demo.base_url
    support, billing = _completion(url, "tiny:support-v1"), _completion(url, "tiny:billing")
    assert support != billing
    before = demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo")["metadata"]
    try:
        assert demo.run("demo-upload", "support-v1", "--as", "revised").returncode == 0
        first = eventually(
            lambda: _revision(url, "tiny:revised"), what="tiny:revised to be listed", timeout=120
        )
        assert _completion(url, "tiny:revised") == support

        assert demo.run("demo-upload", "billing", "--as", "revised").returncode == 0
        second = eventually(
            lambda: (r := _revision(url, "tiny:revised")) != first and r,
            what="a new revision of tiny:revised",
            timeout=120,
        )
        assert second != first
        # The replica reads the index on its own: give it the same time the ingress had.
        eventually(
            lambda: _completion(url, "tiny:revised") == billing,
            what="tiny:revised to answer with its new weights",
            timeout=60,
        )
        after = demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo")["metadata"]
        assert after["resourceVersion"] == before["resourceVersion"]
    finally:
        demo.run("demo-remove", "revised")
    # Withdrawn from the bucket: no longer listed, and asking for it is a 404.
    eventually(
        lambda: _revision(url, "tiny:revised") is None,
        what="tiny:revised to be withdrawn",
        timeout=120,
    )
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        _completion(url, "tiny:revised")


def _serve_applications(demo: Demo) -> dict[str, Any]:
    """Ray Serve's own view, from the dashboard on the head, reached through the API server's
    service proxy (as KubeRay reaches it)."""
    kubeconfig = demo.state["cluster"]["kubeconfig"]
    raw = subprocess.run(
        [
            str(tool("kubectl")),
            f"--kubeconfig={kubeconfig}",
            "get",
            "--raw",
            "/api/v1/namespaces/lorafleet-demo/services/tiny-head-svc:dashboard/proxy"
            "/api/serve/applications/",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return dict(json.loads(raw)["applications"])


def _llm_deployment(demo: Demo) -> dict[str, Any]:
    deployments = _serve_applications(demo)["lorafleet"]["deployments"]
    (server,) = [d for name, d in deployments.items() if name.startswith("LoraFleetServer")]
    return dict(server)


def _dashboard_router(demo: Demo) -> tuple[str, str, list[str]]:
    """The application's status, the LLM deployment's router policy and its replica ids
    (empty while Serve replaces the deployment)."""
    app = _serve_applications(demo).get("lorafleet") or {}
    servers = [d for n, d in app.get("deployments", {}).items() if n.startswith("LoraFleetServer")]
    if not servers:
        return str(app.get("status", "")), "", []
    config = servers[0]["deployment_config"]["request_router_config"]
    replicas = [r["replica_id"] for r in servers[0]["replicas"]]
    return app["status"], config["request_router_kwargs"]["policy"], replicas


def _set_policy(demo: Demo, policy: str) -> None:
    kubeconfig = demo.state["cluster"]["kubeconfig"]
    subprocess.run(
        [
            str(tool("kubectl")),
            f"--kubeconfig={kubeconfig}",
            "patch",
            "loramodel",
            "tiny",
            "-n",
            "lorafleet-demo",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"router": {"policy": policy}}}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_a_serve_only_edit_redeploys_the_application_in_place(demo: Demo) -> None:
    """Changing the router policy touches serveConfigV2 only: KubeRay updates the Serve
    application on the running cluster (no new RayCluster), which redeploys its replicas with
    the new policy, and the model keeps its URL."""
    before = demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo")
    clusters = [
        c["metadata"]["name"]
        for c in demo.kubectl("get", "rayclusters", "-n", "lorafleet-demo")["items"]
    ]
    _, policy, replicas = _dashboard_router(demo)
    assert policy == "lorafleet"
    try:
        _set_policy(demo, "affinity")
        after = eventually(
            lambda: (
                (rs := demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo"))[
                    "metadata"
                ]["generation"]
                > before["metadata"]["generation"]
                and rs
            ),
            what="the operator to update the RayService",
            timeout=120,
        )
        assert after["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
        assert after["spec"]["serveConfigV2"] != before["spec"]["serveConfigV2"]
        _, _, new_replicas = eventually(
            lambda: (d := _dashboard_router(demo))[0] == "RUNNING" and d[1] == "affinity" and d,
            what="the application to run with policy affinity",
            timeout=300,
        )
        assert not set(new_replicas) & set(replicas), "the LLM replicas were not redeployed"
        now = [
            c["metadata"]["name"]
            for c in demo.kubectl("get", "rayclusters", "-n", "lorafleet-demo")["items"]
        ]
        assert now == clusters
        assert (
            demo.kubectl("get", "rayservice", "tiny", "-n", "lorafleet-demo")["status"][
                "activeServiceStatus"
            ]["rayClusterName"]
            == before["status"]["activeServiceStatus"]["rayClusterName"]
        )
        assert _completion(demo.base_url, "tiny:billing")
    finally:
        _set_policy(demo, "lorafleet")
        eventually(
            lambda: _dashboard_router(demo)[:2] == ("RUNNING", "lorafleet"),
            what="the policy to be restored",
            timeout=300,
        )
        eventually(
            lambda: (
                next(
                    c
                    for c in demo.kubectl("get", "loramodel", "tiny", "-n", "lorafleet-demo")[
                        "status"
                    ]["conditions"]
                    if c["type"] == "Ready"
                )["status"]
                == "True"
            ),
            what="the LoRAModel to be Ready again",
            timeout=120,
        )


NAMESPACED_KINDS = (
    "rayservices,rayclusters,pods,services,configmaps,serviceaccounts,roles,rolebindings"
)


def _objects(demo: Demo) -> set[tuple[str, str]]:
    listed = demo.kubectl("get", NAMESPACED_KINDS, "-n", "lorafleet-demo")["items"]
    return {(o["kind"], o["metadata"]["name"]) for o in listed}


def _conditions(demo: Demo, name: str) -> dict[str, dict[str, Any]]:
    model = demo.kubectl("get", "loramodel", name, "-n", "lorafleet-demo")
    return {c["type"]: c for c in (model.get("status") or {}).get("conditions", [])}


def _rayclusters_of(demo: Demo, name: str) -> dict[str, dict[str, Any]]:
    listed = demo.kubectl(
        "get", "rayclusters", "-n", "lorafleet-demo", "-l", f"ray.io/originated-from-cr-name={name}"
    )["items"]
    return {c["metadata"]["name"]: c for c in listed}


def _worker_memory(raycluster_spec: dict[str, Any]) -> str:
    (group,) = raycluster_spec["workerGroupSpecs"]
    (container,) = [c for c in group["template"]["spec"]["containers"] if c["name"] == "ray-worker"]
    return str(container["resources"]["limits"]["memory"])


def test_a_second_loramodel_fails_visibly_rolls_out_on_resource_edits_and_leaves_nothing(
    demo: Demo,
) -> None:
    """A user's second LoRAModel names an adapter's folder as its base model (a plausible
    mistake). Its replicas fail on the Ray pods at once (the folder has no config.json): the
    LoRAModel is Degraded with the replica's own error. A resources edit changes
    rayClusterConfig only, and KubeRay rolls out a new RayCluster with the new size. Deleting
    the LoRAModel removes everything it created and nothing else."""
    name = "second"
    before = _objects(demo)
    manifest = yaml.safe_load((EXAMPLES / "lora-model.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": "lorafleet-demo"}
    manifest["spec"]["baseModel"]["source"] = "s3://lorafleet-demo/adapters/billing"
    demo.apply(manifest)
    try:
        degraded = eventually(
            lambda: (
                (c := _conditions(demo, name).get("Degraded", {})).get("status") == "True" and c
            ),
            what=f"LoRAModel {name} to be Degraded",
            timeout=400,
        )
        assert degraded["reason"] == "ServeDeployFailed"
        # The replica's own words, from the Ray worker pod: the folder holds no model.
        assert (
            "baseModel.source s3://lorafleet-demo/adapters/billing holds no readable config.json"
            in degraded["message"]
        ), degraded["message"]
        assert _conditions(demo, name)["Ready"]["status"] == "False"

        rayservice = demo.kubectl("get", "rayservice", name, "-n", "lorafleet-demo")
        (old_cluster,) = _rayclusters_of(demo, name)
        assert _worker_memory(rayservice["spec"]["rayClusterConfig"]) == "8Gi"
        demo.apply(
            {
                **manifest,
                "spec": {
                    **manifest["spec"],
                    "resources": {**manifest["spec"]["resources"], "memory": "6Gi"},
                },
            }
        )
        edited = eventually(
            lambda: (
                (rs := demo.kubectl("get", "rayservice", name, "-n", "lorafleet-demo"))["spec"][
                    "rayClusterConfig"
                ]
                != rayservice["spec"]["rayClusterConfig"]
                and rs
            ),
            what="the operator to change rayClusterConfig",
            timeout=60,
        )
        assert _worker_memory(edited["spec"]["rayClusterConfig"]) == "6Gi"
        assert edited["spec"]["serveConfigV2"] == rayservice["spec"]["serveConfigV2"]
        rolled = eventually(
            lambda: (
                (clusters := _rayclusters_of(demo, name))
                and old_cluster not in clusters
                and clusters
            ),
            what="KubeRay to replace the RayCluster",
            timeout=300,
        )
        (new_cluster,) = rolled.values()
        assert _worker_memory(new_cluster["spec"]) == "6Gi"
    finally:
        demo.kubectl_ok("delete", "loramodel", name, "-n", "lorafleet-demo", "--wait=false")
    eventually(
        lambda: _objects(demo) == before,
        what=f"everything LoRAModel {name} created to be deleted",
        timeout=180,
        context=lambda: f"left: {sorted(_objects(demo) - before)}",
    )
    # The demo's own model kept serving throughout.
    assert _completion(demo.base_url, "tiny:support-v1")


# ---------------------------------------------------------------- secrets stay in their Secret


def _secret_manifest(access_key: str, secret_key: str) -> dict[str, Any]:
    data = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CREDENTIALS_SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _request_sync(demo: Demo) -> None:
    demo.kubectl_ok(
        "annotate",
        "adaptercatalog",
        CATALOG,
        "-n",
        NAMESPACE,
        f"{names.ANNOTATION_SYNC_REQUESTED}={time.time_ns()}",
        "--overwrite",
    )


def _catalog_ready(demo: Demo) -> dict[str, Any]:
    catalog = demo.kubectl("get", "adaptercatalog", CATALOG, "-n", NAMESPACE)
    return next(
        (c for c in (catalog.get("status") or {}).get("conditions", []) if c["type"] == "Ready"),
        {},
    )


def _post_completion(base_url: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/completions",
        json={"model": model, "prompt": "Hi", "max_tokens": 2, "temperature": 0},
        timeout=120,
    )


def _served(base_url: str, model: str) -> bool:
    """Whether a completion of ``model`` succeeds now (a dropped connection is a no, for a
    poll to try again)."""
    try:
        return _post_completion(base_url, model).status_code == 200
    except httpx.TransportError:
        return False


def _recorded(response: httpx.Response) -> str:
    """Everything a client sees of a response: status line, headers and body."""
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"HTTP {response.status_code}\n{headers}\n\n{response.text}"


def _text(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


def _api_objects(demo: Demo) -> str:
    """Every object of every listable kind in every namespace, Events included, except
    Secrets (the one place the keys belong)."""
    kubectl = [str(tool("kubectl")), f"--kubeconfig={demo.state['cluster']['kubeconfig']}"]
    kinds = _text([*kubectl, "api-resources", "--verbs=list", "-o", "name"]).split()
    kinds = [k for k in kinds if k != "secrets"]
    assert {"events", "configmaps", "loramodels.lorafleet.dev", "rayservices.ray.io"} <= set(
        kinds
    ), kinds
    return _text([*kubectl, "get", ",".join(kinds), "-A", "-o", "json"])


def _log_files(demo: Demo) -> dict[str, bytes]:
    """The demo's process logs (operator, KubeRay, the Ray pod kubelet, MinIO, forwarders), each
    Ray pod's output and every file of every Ray session's logs folder (Serve, workers, raylet,
    GCS, dashboard)."""
    cluster = demo.state["cluster"]
    data = Path(cluster["data_dir"])
    files = [p for d in ("logs", "pods") for p in (data / d).rglob("*") if p.is_file()]
    files += [
        p for p in Path(cluster["ray_temp_dir"]).rglob("*") if p.is_file() and "logs" in p.parts
    ]
    return {str(p): p.read_bytes() for p in files}


def _metrics(demo: Demo) -> dict[str, str]:
    """The operator's /metrics and every Ray pod's metrics port (where the runtime's series are
    exported), read inside the cluster network as Prometheus would."""
    cluster = demo.state["cluster"]
    cmdline = Path(f"/proc/{cluster['pids']['lorafleet-operator']}/cmdline").read_bytes()
    (address,) = [
        a.decode().split("=", 1)[1]
        for a in cmdline.split(b"\0")
        if a.startswith(b"--metrics-address=")
    ]
    urls = {"operator": f"http://{address}/metrics"}
    for pod in demo.kubectl("get", "pods", "-n", NAMESPACE)["items"]:
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                if port.get("name") == "metrics":
                    urls[pod["metadata"]["name"]] = (
                        f"http://{pod['status']['podIP']}:{port['containerPort']}/metrics"
                    )

    def scrape() -> dict[str, str]:
        return {name: httpx.get(url, timeout=30).text for name, url in urls.items()}

    return netns.NetworkNamespace(cluster["netns"]).call(scrape, timeout=120)


def _leaks(corpora: dict[str, bytes], needles: dict[str, str]) -> list[str]:
    """Where any needle (a value or its base64) occurs, the value itself left out."""
    found = []
    for label, value in needles.items():
        for form in (value, base64.b64encode(value.encode()).decode()):
            raw = form.encode()
            for name, text in corpora.items():
                at = text.find(raw)
                if at >= 0:
                    context = text[max(0, at - 80) : at + len(raw) + 80].replace(raw, b"<HERE>")
                    found.append(f"{label} in {name}: {context!r}")
    return found


def test_credentials_never_leave_their_secret(demo: Demo) -> None:
    """A catalog syncs and adapters download with the demo's keys; then the Secret holds wrong
    keys (the operator's sync and the runtime's download fail with AccessDenied, and recover
    when the keys are put back), then the Secret is deleted (the same, naming the Secret) and
    re-created. Afterwards neither the right nor the wrong keys, nor their base64, appear
    anywhere a user of the cluster can read: any API object but the Secret (statuses, Events,
    index ConfigMaps), `helm get all`, the operator's, KubeRay's and every Ray process's logs
    (at DEBUG), the metrics endpoints, Serve's application status, and the HTTP responses of
    the failing requests."""
    url = demo.base_url
    state = demo.state
    right = _secret_manifest(state["access_key"], state["secret_key"])
    wrong_key, wrong_secret = "wrong-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    needles = {
        "the access key id": state["access_key"],
        "the secret key": state["secret_key"],
        "the wrong access key id": wrong_key,
        "the wrong secret key": wrong_secret,
    }
    # Three uncached adapters: one per phase that must download (a cached one would not).
    ok, denied, gone = "leak-ok", "leak-denied", "leak-gone"
    responses: dict[str, httpx.Response] = {}
    # The API objects while each failure shows (statuses change back after it).
    snapshots: dict[str, str] = {}
    # The replicas read the Secret again this often: wait that long before a download must
    # see the new keys (one earlier would use, and cache with, the old ones).
    replica_refresh = STORAGE_REFRESH_SECONDS + 5
    try:
        # (1) Sync with the right keys: the new adapters are listed.
        for name in (ok, denied, gone):
            assert demo.run("demo-upload", "support-v1", "--as", name).returncode == 0
        _request_sync(demo)
        eventually(
            lambda: {f"tiny:{n}" for n in (ok, denied, gone)} <= set(_models(url)),
            what="the new adapters to be listed",
            timeout=120,
        )
        # (2) Serve: the replica downloads an adapter with the Secret's keys.
        assert _post_completion(url, f"tiny:{ok}").status_code == 200

        # (3) Wrong keys: the operator's sync and the replica's download are refused.
        demo.apply(_secret_manifest(wrong_key, wrong_secret))
        changed = time.monotonic()
        _request_sync(demo)
        refused = eventually(
            lambda: (c := _catalog_ready(demo)).get("reason") == "AccessDenied" and c,
            what="the catalog sync to fail with AccessDenied",
            timeout=90,
        )
        assert refused["status"] == "False"
        time.sleep(max(0.0, changed + replica_refresh - time.monotonic()))
        responses["wrong keys"] = _post_completion(url, f"tiny:{denied}")
        assert responses["wrong keys"].status_code == 503, _recorded(responses["wrong keys"])
        assert "AccessDenied" in responses["wrong keys"].text
        snapshots["wrong keys"] = _api_objects(demo)

        # The right keys back: both sides recover, nothing restarted.
        demo.apply(right)
        _request_sync(demo)
        eventually(
            lambda: _catalog_ready(demo).get("status") == "True",
            what="the catalog to sync again",
            timeout=90,
        )
        eventually(
            lambda: _served(url, f"tiny:{denied}"),
            what=f"tiny:{denied} to download with the right keys",
            timeout=replica_refresh + 30,
        )

        # (4) The Secret deleted: AccessDenied naming it, on both sides; then re-created.
        demo.kubectl_ok("delete", "secret", CREDENTIALS_SECRET, "-n", NAMESPACE)
        changed = time.monotonic()
        _request_sync(demo)
        missing = eventually(
            lambda: (
                (c := _catalog_ready(demo)).get("reason") == "AccessDenied"
                and "does not exist" in c.get("message", "")
                and c
            ),
            what="the catalog sync to fail for the missing Secret",
            timeout=90,
        )
        assert f"{NAMESPACE}/{CREDENTIALS_SECRET}" in missing["message"]
        time.sleep(max(0.0, changed + replica_refresh - time.monotonic()))
        responses["no Secret"] = _post_completion(url, f"tiny:{gone}")
        assert responses["no Secret"].status_code == 503, _recorded(responses["no Secret"])
        assert "AccessDenied" in responses["no Secret"].text
        assert CREDENTIALS_SECRET in responses["no Secret"].text
        snapshots["no Secret"] = _api_objects(demo)

        demo.apply(right)
        _request_sync(demo)
        eventually(
            lambda: _catalog_ready(demo).get("status") == "True",
            what="the catalog to sync with the re-created Secret",
            timeout=90,
        )
        eventually(
            lambda: _served(url, f"tiny:{gone}"),
            what=f"tiny:{gone} to download with the re-created Secret",
            timeout=replica_refresh + 30,
        )
    finally:
        demo.apply(right)
        for name in (ok, denied, gone):
            demo.run("demo-remove", name)
        _request_sync(demo)

    # Left as found: the test's adapters withdrawn (other tests list the demo's models).
    eventually(
        lambda: not {f"tiny:{n}" for n in (ok, denied, gone)} & set(_models(url)),
        what="the test's adapters to be withdrawn",
        timeout=120,
    )

    # Everything a user (or anyone with read access but to Secrets) can read.
    kubectl_objects = _api_objects(demo)
    helm = [
        str(tool("helm")),
        f"--kubeconfig={state['cluster']['kubeconfig']}",
        "get",
        "all",
        "lorafleet",
        "-n",
        "lorafleet-system",
    ]
    logs = _log_files(demo)
    metrics = _metrics(demo)
    corpora: dict[str, bytes] = {
        "API objects and Events": kubectl_objects.encode(),
        **{f"API objects ({phase})": text.encode() for phase, text in snapshots.items()},
        "helm get all": _text(helm).encode(),
        "Serve's applications": json.dumps(_serve_applications(demo)).encode(),
        "the demo's output": demo.output.encode(),
        **{f"metrics of {name}": text.encode() for name, text in metrics.items()},
        **{f"HTTP response ({phase})": _recorded(r).encode() for phase, r in responses.items()},
        **logs,
    }

    assert _leaks(corpora, needles) == []
    # The search is not vacuous: what was searched holds the phases above, at DEBUG.
    assert all('"reason": "AccessDenied"' in text for text in snapshots.values())
    assert '"kind": "Event"' in kubectl_objects and names.LABEL_CATALOG in kubectl_objects
    operator_log = next(t for n, t in logs.items() if n.endswith("/lorafleet-operator.log"))
    # The chart's log format is JSON: {"message": ..., "severity": "debug"}.
    assert b'"severity": "debug"' in operator_log and b"AccessDenied" in operator_log
    assert any(n.endswith("/kuberay-operator.log") for n in logs)
    ray_logs = {n: t for n, t in logs.items() if n.startswith(state["cluster"]["ray_temp_dir"])}
    assert any("/serve/" in n for n in ray_logs) and any("raylet" in n for n in ray_logs)
    assert any(b"DEBUG" in t for t in ray_logs.values()), "no Ray log at DEBUG"
    # Serve's access log holds the refused downloads (the 503s above).
    assert any(re.search(rb"POST /\S* 503 ", t) for t in ray_logs.values())
    assert "lorafleet_" in metrics["operator"]
    assert any("lorafleet_" in t for n, t in metrics.items() if n != "operator")
