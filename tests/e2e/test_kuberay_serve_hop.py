"""The real KubeRay operator does the RayService "Serve hop" here: it creates the RayCluster,
its pods run (KWOK + local Ray in network namespaces), it deploys the Serve config to the head,
labels the serve pods and the serve Service gets endpoints. A request through the API server's
service proxy, made from the host, is answered by the app; a deleted worker pod is replaced and
the app answers again from the new one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from lorafleet_testbed.kuberay_cluster import KubeRayCluster

from .conftest import eventually, get_json, host_kubectl, log_tail

NAMESPACE = "serve-hop"
NAME = "hop"
RAYSERVICE = f"""
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: {NAME}
  namespace: {NAMESPACE}
spec:
  serveConfigV2: |
    http_options:
      host: 0.0.0.0
      port: 8000
    applications:
      - name: echo
        route_prefix: /
        import_path: echo:app
  rayClusterConfig:
    rayVersion: "2.60.0"
    headGroupSpec:
      rayStartParams:
        num-cpus: "0"             # no replicas on the head: the app must run on the worker
        object-store-memory: "100000000"
        dashboard-host: "0.0.0.0"
      template:
        spec:
          containers:
          - name: ray-head
            image: rayproject/ray:2.60.0
            resources:
              requests: {{cpu: 100m, memory: 256Mi}}
              limits: {{cpu: "1", memory: 2Gi}}
            ports:
            - {{containerPort: 6379, name: gcs-server}}
            - {{containerPort: 8265, name: dashboard}}
            - {{containerPort: 10001, name: client}}
            - {{containerPort: 8000, name: serve}}
    workerGroupSpecs:
    - groupName: cpu
      replicas: 1
      minReplicas: 1
      maxReplicas: 1
      rayStartParams:
        num-cpus: "1"
        object-store-memory: "100000000"
      template:
        spec:
          containers:
          - name: ray-worker
            image: rayproject/ray:2.60.0
            resources:
              requests: {{cpu: 100m, memory: 256Mi}}
              limits: {{cpu: "1", memory: 2Gi}}
"""


@dataclass(frozen=True)
class ServeHop:
    cluster: KubeRayCluster

    def rayservice(self) -> dict[str, Any]:
        return get_json(self.cluster, "rayservice", NAME, "-n", NAMESPACE)

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = get_json(self.cluster, "pods", "-n", NAMESPACE).get(
            "items", []
        )
        return items

    def worker(self) -> dict[str, Any] | None:
        workers = [
            p for p in self.pods() if p["metadata"]["labels"].get("ray.io/node-type") == "worker"
        ]
        return workers[0] if len(workers) == 1 else None

    def call(self, path: str) -> dict[str, Any] | None:
        """GET the app through the API server's service proxy, from the host; None until the
        proxy has somewhere to send it."""
        raw = host_kubectl(
            self.cluster,
            "get",
            "--raw",
            f"/api/v1/namespaces/{NAMESPACE}/services/{NAME}-serve-svc:8000/proxy{path}",
            check=False,
        )
        try:
            answer: dict[str, Any] = json.loads(raw)
        except ValueError:
            return None
        return answer

    def diagnosis(self) -> str:
        status = self.rayservice().get("status", {})
        pods = [
            (p["metadata"]["name"], p["status"].get("podIP"), _ready(p), p["metadata"]["labels"])
            for p in self.pods()
        ]
        return (
            f"RayService status: {yaml.safe_dump(status)}\npods: {pods}\n"
            f"{log_tail(self.cluster)}\n{log_tail(self.cluster, 'kuberay-operator', 20)}"
        )


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", []) or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _rayservice_ready(hop: ServeHop) -> dict[str, Any] | None:
    status = hop.rayservice().get("status", {})
    conditions = {c["type"]: c for c in status.get("conditions", []) or []}
    ready = conditions.get("Ready", {}).get("status") == "True"
    return status if ready and status.get("numServeEndpoints", 0) >= 1 else None


@pytest.fixture(scope="module")
def hop(cluster: KubeRayCluster) -> Iterator[ServeHop]:
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("apply", "-f", "-", input_text=RAYSERVICE)
    serve_hop = ServeHop(cluster)
    eventually(
        lambda: _rayservice_ready(serve_hop),
        timeout=150,
        what="the RayService to become Ready with a serve endpoint",
        context=serve_hop.diagnosis,
    )
    yield serve_hop
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def test_kuberay_brings_the_rayservice_to_ready(hop: ServeHop) -> None:
    status = hop.rayservice()["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ready["reason"] == "NonZeroServeEndpoints"
    assert status["numServeEndpoints"] >= 1
    app = status["activeServiceStatus"]["applicationStatuses"]["echo"]
    assert app["status"] == "RUNNING"

    # The worker (which runs the replica: the head has no CPUs) turns Ready once its Serve
    # proxy is healthy (its readiness probe), and KubeRay labels it a serve pod.
    def serving_pods() -> set[str] | None:
        pods = hop.pods()
        serving = {
            p["metadata"]["labels"]["ray.io/node-type"]
            for p in pods
            if p["metadata"]["labels"].get("ray.io/serve") == "true"
        }
        return serving if "worker" in serving and all(_ready(p) for p in pods) else None

    eventually(
        serving_pods,
        timeout=60,
        what="every pod Ready and the worker labelled ray.io/serve=true",
        context=hop.diagnosis,
    )


def test_a_request_through_the_api_server_proxy_is_answered_by_the_app(hop: ServeHop) -> None:
    worker = hop.worker()
    assert worker is not None
    answer = eventually(lambda: hop.call("/hello"), timeout=30, what="an answer from the app")
    assert answer == {"app": "echo", "path": "/hello", "node_ip": worker["status"]["podIP"]}


def test_a_deleted_worker_is_replaced_and_the_app_answers_again(hop: ServeHop) -> None:
    old = hop.worker()
    assert old is not None
    hop.cluster.kubectl("delete", "pod", old["metadata"]["name"], "-n", NAMESPACE)

    def replacement_ready() -> dict[str, Any] | None:
        new = hop.worker()
        fresh = new is not None and new["metadata"]["uid"] != old["metadata"]["uid"]
        return new if fresh and new is not None and _ready(new) else None

    new = eventually(
        replacement_ready,
        timeout=90,
        what="KubeRay to replace the worker and the new one to become Ready",
        context=hop.diagnosis,
    )

    def answered_by_new_worker() -> dict[str, Any] | None:
        answer = hop.call("/again")
        return answer if answer and answer.get("node_ip") == new["status"]["podIP"] else None

    answer = eventually(
        answered_by_new_worker,
        timeout=90,
        what="the app to answer from the new worker",
        context=hop.diagnosis,
    )
    assert answer["path"] == "/again"
    eventually(
        lambda: _rayservice_ready(hop),
        timeout=30,
        what="the RayService to be Ready again",
        context=hop.diagnosis,
    )
