"""The e2e test bed's kubelet stand-in builds a Ray pod's environment and start line the way a
kubelet and cluster DNS would, applies probe thresholds as the kubelet does, and never lets the
host connect to a fake cluster address."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from lorafleet_testbed import netns
from lorafleet_testbed.podspec import (
    PodStartError,
    ReadinessProbe,
    container_env,
    head_service_names,
    ray_start_argv,
    readiness_patch,
    replace_hosts,
)

POD: dict[str, Any] = {
    "metadata": {
        "name": "hop-x7k2p-cpu-worker-abcde",
        "namespace": "serve",
        "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
        "labels": {"ray.io/group": "cpu"},
    },
    "spec": {"nodeName": "node-0", "containers": [{"name": "ray-worker"}, {"name": "sidecar"}]},
    "status": {
        "podIP": "10.244.0.2",
        "containerStatuses": [
            {"name": "ray-worker", "ready": False, "restartCount": 0},
            {"name": "sidecar", "ready": True, "restartCount": 4},
        ],
    },
}
OBJECTS: dict[tuple[str, str], dict[str, Any]] = {
    ("secrets", "s3"): {"data": {"key": base64.b64encode(b"s3cr3t").decode()}},
    ("configmaps", "settings"): {"data": {"level": "debug", "mode": "fast"}},
}


def lookup(kind: str, name: str) -> dict[str, Any] | None:
    return OBJECTS.get((kind, name))


def test_env_is_built_as_a_kubelet_builds_it() -> None:
    container = {
        "name": "ray-worker",
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        "env": [
            {"name": "CLUSTER", "value": "hop"},
            {"name": "GREETING", "value": "hello $(CLUSTER), $(UNSET) costs $$(CLUSTER)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "GROUP",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/group']"}},
            },
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "key"}}},
            {
                "name": "LEVEL",
                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}},
            },
            {
                "name": "OPTIONAL",
                "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}},
            },
        ],
    }
    env = container_env(POD, container, lookup)
    assert env == {
        "CFG_level": "debug",
        "CFG_mode": "fast",
        "CLUSTER": "hop",
        "GREETING": "hello hop, $(UNSET) costs $(CLUSTER)",
        "POD": "hop-x7k2p-cpu-worker-abcde",
        "GROUP": "cpu",
        "IP": "10.244.0.2",
        "KEY": "s3cr3t",
        "LEVEL": "debug",
    }


def test_a_missing_secret_keeps_the_pod_from_starting() -> None:
    container = {
        "name": "ray-worker",
        "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}],
    }
    with pytest.raises(PodStartError, match="secret absent"):
        container_env(POD, container, lookup)


def test_the_head_service_name_stands_for_the_head_pod_ip() -> None:
    # What KubeRay v1.6.1 puts in a worker's env (no cluster DNS here to resolve it).
    env = {
        "FQ_RAY_IP": "hop-x7k2p-head-svc.serve.svc.cluster.local",
        "RAY_IP": "hop-x7k2p-head-svc",
        "RAY_CLUSTER_NAME": "hop-x7k2p",
        "KUBERAY_GEN_RAY_START_CMD": "ray start --address=hop-x7k2p-head-svc.serve.svc."
        "cluster.local:6379 --block --num-cpus=1",
        "OTHER": "hop-x7k2p-head-svc-backup:1",
    }
    names = head_service_names(env)
    rewritten = {k: replace_hosts(v, names, "10.244.0.1") for k, v in env.items()}
    assert rewritten["FQ_RAY_IP"] == "10.244.0.1"
    assert rewritten["RAY_IP"] == "10.244.0.1"
    assert rewritten["RAY_CLUSTER_NAME"] == "hop-x7k2p"
    assert rewritten["OTHER"] == env["OTHER"]
    argv = ray_start_argv(rewritten, "/venv/bin/ray", "10.244.0.2", Path("/tmp/lfr-x/0f1e2d3c"))
    assert argv == [
        "/venv/bin/ray",
        "start",
        "--address=10.244.0.1:6379",
        "--block",
        "--num-cpus=1",
        "--node-ip-address=10.244.0.2",
        "--temp-dir=/tmp/lfr-x/0f1e2d3c",
    ]


def test_a_container_without_kuberays_start_line_is_refused() -> None:
    with pytest.raises(PodStartError, match="KUBERAY_GEN_RAY_START_CMD"):
        ray_start_argv({}, "ray", "10.244.0.2", Path("/tmp/x"))


def test_readiness_follows_the_probe_thresholds() -> None:
    probe = ReadinessProbe.starting(
        {"initialDelaySeconds": 10, "periodSeconds": 5, "failureThreshold": 3}, started=100.0
    )
    assert probe.next_at == 110.0
    ready = probe.record(True, ready=False, now=110.0)
    assert ready and probe.next_at == 115.0
    ready = probe.record(False, ready, now=115.0)
    ready = probe.record(False, ready, now=120.0)
    assert ready, "two failures are below failureThreshold 3"
    ready = probe.record(False, ready, now=125.0)
    assert not ready
    twice = ReadinessProbe.starting({"successThreshold": 2}, started=0.0)
    assert not twice.record(True, ready=False, now=0.0)
    assert twice.record(True, ready=False, now=10.0)


def test_the_status_patch_changes_only_the_ray_container() -> None:
    patch = readiness_patch(POD, True, 2, "2026-12-01T00:00:00Z", last_exit=1)
    statuses = {s["name"]: s for s in patch["status"]["containerStatuses"]}
    assert statuses["ray-worker"]["ready"] is True
    assert statuses["ray-worker"]["restartCount"] == 2
    assert statuses["ray-worker"]["lastState"] == {"terminated": {"exitCode": 1, "reason": "Error"}}
    assert statuses["sidecar"] == {"name": "sidecar", "ready": True, "restartCount": 4}
    conditions = {c["type"]: c for c in patch["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Ready"]["reason"] is None  # removes KWOK's ContainersNotReady


@pytest.mark.parametrize("address", ["10.244.0.1", "10.245.0.1", "8.8.8.8", "example.com"])
def test_the_host_never_connects_to_a_cluster_address(address: str) -> None:
    # Outside the test bed's namespaces a pod IP follows the host's default route off the
    # machine: refused before any packet is sent.
    with pytest.raises(netns.NetnsError, match="refusing"):
        netns.connect(address, 8000, timeout=1)


def test_loopback_is_always_allowed() -> None:
    netns.check_destination("127.0.0.1")
    netns.check_destination("localhost")
    netns.check_destination("::1")


def test_pod_namespace_names_stay_short_and_findable() -> None:
    cluster = netns.NetworkNamespace("lorafleet-123-abc123")
    name = netns.pod_name(cluster, "serve", "hop-" + "x" * 240)
    assert name.startswith("lorafleet-123-abc123.serve.hop-")
    assert len(name) <= 120
    assert netns.veth_name(netns.NetworkNamespace(name)).startswith("lf")
    assert len(netns.veth_name(netns.NetworkNamespace(name))) <= 15
