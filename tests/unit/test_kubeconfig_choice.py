"""The operator and the runtime pick their API credentials by the same rule: the kubeconfig
named by KUBECONFIG when it is set, else the client library's choice (~/.kube/config when it
exists, else the pod's service account). The runtime used to try in-cluster credentials first,
the operator never looked at ~/.kube/config."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio import config

from lorafleet_operator.k8s.client import KubeClient
from lorafleet_runtime.adapters.index import KubernetesIndexSource


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []

    async def load_kube_config(config_file: str | None = None, **_: Any) -> None:
        calls.append(("kubeconfig", config_file))

    async def load_config(**_: Any) -> None:
        calls.append(("library default", None))

    def load_incluster_config(**_: Any) -> None:
        calls.append(("in-cluster", None))

    monkeypatch.setattr(config, "load_kube_config", load_kube_config)
    monkeypatch.setattr(config, "load_config", load_config)
    monkeypatch.setattr(config, "load_incluster_config", load_incluster_config)
    return calls


async def _both(kubeconfig: str | None) -> None:
    client = await KubeClient.connect(kubeconfig)
    await client.close()
    source = KubernetesIndexSource()
    await source._connect()
    await source.close()


def test_kubeconfig_set_means_that_file_on_both_sides(
    loads: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/etc/lorafleet/kubeconfig")
    asyncio.run(_both("/etc/lorafleet/kubeconfig"))
    assert loads == [("kubeconfig", "/etc/lorafleet/kubeconfig")] * 2


def test_no_kubeconfig_leaves_the_choice_to_the_client_library_on_both_sides(
    loads: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    asyncio.run(_both(None))
    assert loads == [("library default", None)] * 2
