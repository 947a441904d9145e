"""`make demo` as a user runs it (`python -m lorafleet_testbed demo`), on the path it walks:
helm install of the chart, the operator with the chart's ServiceAccount token, kubectl apply of
examples/demo, the real KubeRay deploying the Serve application on Ray pods, then OpenAI calls
for the base model and adapters. Then what a user does next: run it again (nothing changes),
publish an adapter to the bucket (it is served, the RayService is not written), `demo-down`
(nothing is left)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lorafleet_testbed import netns, process
from lorafleet_testbed.toolchain import tool

from .conftest import require_namespaces


@dataclass
class Demo:
    directory: Path
    output: str

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lorafleet_testbed", *args],
            capture_output=True,
            text=True,
            env=dict(os.environ, LORAFLEET_DEMO_DIR=str(self.directory)),
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
    first = Demo(directory, "")
    result = first.run("demo")
    demo = Demo(directory, result.stdout)
    try:
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
    deployments = json.loads(raw)["applications"]["lorafleet"]["deployments"]
    (server,) = [d for name, d in deployments.items() if name.startswith("LoraFleetServer")]
    router = server["deployment_config"]["request_router_config"]
    assert router["request_router_class"] == (
        "lorafleet_runtime.router.serve:LoraFleetRequestRouter"
    )
    assert router["request_router_kwargs"]["policy"] == "lorafleet"
