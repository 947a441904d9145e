"""Render the KubeRay RayService (ray.io/v1) that serves one LoRAModel.

Pure: the same LoRAModel, catalog snapshots and operator config give the same object, down to
the byte of ``serveConfigV2``. What KubeRay does with each part decides what goes where:

- any change under ``rayClusterConfig`` starts a whole new RayCluster (twice the GPUs while
  it comes up), so only the spec's cluster-shaped fields go there;
- a change of ``serveConfigV2`` re-submits the Serve config in place, so it is rendered with
  sorted keys and carries catalog names, never their adapters;
- adapters therefore change neither; only a move of the effective max LoRA rank to another
  vLLM-supported value changes ``serveConfigV2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from lorafleet_api.contract import RuntimeArgs
from lorafleet_api.names import (
    LABEL_LORAMODEL,
    RUNTIME_IMPORT_PATH,
    SERVE_APPLICATION_NAME,
)
from lorafleet_operator.builders.manifest import (
    loramodel_object_metadata,
    standard_labels,
    with_spec_hash,
)
from lorafleet_operator.builders.names import rayservice_name
from lorafleet_operator.builders.runtime_args import render_runtime_args
from lorafleet_operator.builders.runtime_rbac import runtime_service_account
from lorafleet_operator.constants import (
    HEAD_CONTAINER_NAME,
    HEAD_PORTS,
    PORT_SERVE,
    RAY_API_GROUP_VERSION,
    RAYSERVICE_KIND,
    SERVE_PORT_NAME,
    WORKER_CONTAINER_NAME,
    WORKER_GROUP_NAME,
)
from lorafleet_operator.model.catalog import CatalogSnapshot
from lorafleet_operator.model.config import OperatorConfig
from lorafleet_operator.model.loramodel import LoRAModel, LoRAModelSpec


def render_rayservice(
    loramodel: Mapping[str, Any],
    snapshots: Iterable[CatalogSnapshot],
    config: OperatorConfig,
) -> dict[str, Any]:
    """The desired RayService for a LoRAModel object (as read from the API server or a file).

    ``ownerReferences`` are rendered only when the object has a ``uid`` (it came from the
    API server); ``lorafleet render`` output has none. Raises InvalidSpecError."""
    model = LoRAModel.from_object(loramodel)
    runtime_args = render_runtime_args(model, snapshots)
    metadata = loramodel_object_metadata(
        rayservice_name(model.name),
        model.name,
        model.namespace,
        model.uid,
        block_owner_deletion=True,
    )
    rayservice: dict[str, Any] = {
        "apiVersion": RAY_API_GROUP_VERSION,
        "kind": RAYSERVICE_KIND,
        "metadata": metadata,
        "spec": {
            "serveConfigV2": render_serve_config(runtime_args),
            "rayClusterConfig": _ray_cluster_config(model, config),
            # Only worker pods run Serve proxies that hold replicas; the head has no GPU.
            "excludeHeadPodFromServeSvc": True,
            "serveService": _serve_service(model.name),
            "upgradeStrategy": _upgrade_strategy(model.spec),
        },
    }
    return with_spec_hash(rayservice)


def render_serve_config(runtime_args: RuntimeArgs) -> str:
    """``serveConfigV2``: one application running the lorafleet runtime, as YAML with sorted
    keys so that equal arguments always give the same string."""
    serve_config = {
        "applications": [
            {
                "name": SERVE_APPLICATION_NAME,
                "route_prefix": "/",
                "import_path": RUNTIME_IMPORT_PATH,
                "args": runtime_args.to_serve_args(),
            }
        ]
    }
    return yaml.safe_dump(serve_config, sort_keys=True, default_flow_style=False)


def worker_pod_counts(spec: LoRAModelSpec) -> tuple[int, int]:
    """(min, max) worker pods for the spec's (min, max) Serve replicas.

    One engine replica takes ``tensorParallelSize`` accelerators of one pod, so a pod with
    ``accelerator.count`` of them holds count / tensorParallelSize replicas (the CRD makes
    count a multiple). CPU-only pods (count 0) hold one replica each."""
    per_pod = max(1, spec.accelerators_per_pod // spec.engine.tensor_parallel_size)
    replicas = spec.replicas
    return (
        math.ceil(replicas.min_replicas / per_pod),
        math.ceil(replicas.effective_max / per_pod),
    )


def _ray_cluster_config(model: LoRAModel, config: OperatorConfig) -> dict[str, Any]:
    spec = model.spec
    image = spec.image or config.default_image
    min_pods, max_pods = worker_pod_counts(spec)
    incremental = spec.upgrade_strategy.upgrade_type == "NewClusterWithIncrementalUpgrade"
    return {
        "rayVersion": config.ray_version,
        # KubeRay requires the autoscaler for incremental upgrades (ValidateClusterUpgradeOptions).
        "enableInTreeAutoscaling": max_pods > min_pods or incremental,
        "headGroupSpec": {
            "rayStartParams": {
                # The dashboard must be reachable from KubeRay (it submits serveConfigV2 there).
                "dashboard-host": "0.0.0.0",  # noqa: S104
                # No Serve replica or engine may land on the head: it has no accelerator and
                # its loss takes the whole cluster down.
                "num-cpus": "0",
                "num-gpus": "0",
            },
            "template": {
                "metadata": {"labels": _pod_labels(model.name)},
                "spec": _pod_spec(
                    model,
                    container={
                        "name": HEAD_CONTAINER_NAME,
                        "image": image,
                        "ports": [
                            {"name": name, "containerPort": port} for name, port in HEAD_PORTS
                        ],
                        "resources": _requests_equal_limits(
                            {"cpu": config.head_cpu, "memory": config.head_memory}
                        ),
                    },
                    # GPU node selectors would pin the head to a GPU node it does not use.
                    with_node_selector=False,
                ),
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": WORKER_GROUP_NAME,
                "replicas": min_pods,
                "minReplicas": min_pods,
                "maxReplicas": max_pods,
                # KubeRay derives num-gpus / num-cpus from the container's resources.
                "rayStartParams": {},
                "template": {
                    "metadata": {"labels": _pod_labels(model.name)},
                    "spec": _pod_spec(
                        model,
                        container={
                            "name": WORKER_CONTAINER_NAME,
                            "image": image,
                            "resources": _requests_equal_limits(_worker_resources(spec, config)),
                        },
                        with_node_selector=True,
                    ),
                },
            }
        ],
    }


def _worker_resources(spec: LoRAModelSpec, config: OperatorConfig) -> dict[str, str]:
    resources = {
        "cpu": spec.resources.cpu or config.worker_cpu,
        "memory": spec.resources.memory or config.worker_memory,
    }
    if spec.accelerators_per_pod > 0:
        resources[spec.resources.accelerator.resource_name] = str(spec.accelerators_per_pod)
    return resources


def _requests_equal_limits(resources: Mapping[str, str]) -> dict[str, dict[str, str]]:
    # Guaranteed QoS: an LLM engine evicted for memory pressure takes minutes to come back.
    return {"requests": dict(resources), "limits": dict(resources)}


def _pod_labels(name: str) -> dict[str, str]:
    # Only our own key: KubeRay sets app.kubernetes.io/name on Ray pods and template labels
    # would override it.
    return {LABEL_LORAMODEL: name}


def _pod_spec(
    model: LoRAModel, *, container: dict[str, Any], with_node_selector: bool
) -> dict[str, Any]:
    spec = model.spec
    if spec.env:
        container["env"] = [
            variable.model_dump(by_alias=True, exclude_none=True) for variable in spec.env
        ]
    pod: dict[str, Any] = {
        "containers": [container],
        # Head and workers alike: the runtime reads its catalogs through the API wherever
        # Serve places it (builders/runtime_rbac.py grants that ServiceAccount just that).
        "serviceAccountName": runtime_service_account(model),
    }
    if with_node_selector and spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [
            toleration.model_dump(by_alias=True, exclude_none=True)
            for toleration in spec.tolerations
        ]
    return pod


def _serve_service(name: str) -> dict[str, Any]:
    # A stable name: KubeRay's default serve Service is named after the RayService (which may
    # be shortened) and clients would have to learn it.
    return {
        "metadata": {"name": name, "labels": standard_labels(name)},
        "spec": {"ports": [{"name": SERVE_PORT_NAME, "port": PORT_SERVE}]},
    }


def _upgrade_strategy(spec: LoRAModelSpec) -> dict[str, Any]:
    strategy: dict[str, Any] = {"type": spec.upgrade_strategy.upgrade_type}
    options = spec.upgrade_strategy.cluster_upgrade_options
    if options is not None:
        strategy["clusterUpgradeOptions"] = options.model_dump(by_alias=True)
    return strategy
