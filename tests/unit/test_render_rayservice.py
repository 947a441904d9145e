"""Rendering a LoRAModel into a KubeRay RayService: golden files, KubeRay's schema, and the
properties users rely on (stable names, no needless Ray cluster restarts)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from lorafleet_api.contract import RuntimeArgs
from lorafleet_api.names import ANNOTATION_SPEC_HASH, LABEL_LORAMODEL, RUNTIME_IMPORT_PATH
from lorafleet_operator.builders import dump_manifest, render_rayservice
from lorafleet_operator.builders.names import rayservice_name
from lorafleet_operator.constants import DEFAULT_RUNTIME_IMAGE
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.model import AdapterRank, CatalogSnapshot, OperatorConfig

GOLDEN_DIR = Path(__file__).parent / "golden"
CONFIG = OperatorConfig()
UID = "0b7e4f8e-4c8f-4b8e-9d61-0a1c2b3d4e5f"


def loramodel(name: str, spec: dict[str, Any], namespace: str = "demo") -> dict[str, Any]:
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 1},
        "spec": spec,
    }


def snapshot(name: str, *adapters: tuple[str, int], namespace: str = "demo") -> CatalogSnapshot:
    histogram: dict[int, int] = {}
    for _, rank in adapters:
        histogram[rank] = histogram.get(rank, 0) + 1
    return CatalogSnapshot(
        name=name,
        namespace=namespace,
        found=True,
        rank_histogram=histogram,
        adapters=tuple(AdapterRank(name=n, rank=r) for n, r in adapters),
    )


LONG_NAME = "customer-support-summarisation-qwen2-5-7b-instruct-eu"  # 53 characters

CASES: dict[str, tuple[dict[str, Any], list[CatalogSnapshot]]] = {
    "minimal": (
        loramodel("qwen", {"baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"}}),
        [],
    ),
    "gpu-autoscaling": (
        loramodel(
            "support",
            {
                "baseModel": {"source": "meta-llama/Llama-3.1-8B-Instruct"},
                "catalogs": [{"name": "support-adapters"}, {"name": "billing-adapters"}],
                "engine": {"maxLoras": 8, "maxModelLen": 8192, "gpuMemoryUtilization": 0.9},
                "replicas": {"min": 2, "max": 6, "targetOngoingRequests": 32},
                "resources": {
                    "accelerator": {"count": 1},
                    "acceleratorType": "A100",
                    "cpu": 12,
                    "memory": "96Gi",
                },
            },
        ),
        [
            snapshot("support-adapters", ("refunds", 8), ("tone", 32)),
            snapshot("billing-adapters", ("invoices", 16)),
        ],
    ),
    "tensor-parallel": (
        loramodel(
            "llama70b",
            {
                "baseModel": {"source": "s3://models/llama-3.1-70b-instruct"},
                "engine": {"tensorParallelSize": 4, "dtype": "bfloat16", "maxLoras": 2},
                "replicas": {"min": 2, "max": 4},
                "resources": {
                    "accelerator": {"count": 8},
                    "acceleratorType": "H100",
                    "cpu": "64",
                    "memory": "512Gi",
                },
            },
        ),
        [],
    ),
    "long-name": (
        loramodel(
            LONG_NAME,
            {"modelId": "support-eu", "baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"}},
        ),
        [],
    ),
    "explicit-rank": (
        loramodel(
            "legal",
            {
                "baseModel": {"source": "gs://acme-models/mistral-7b-instruct"},
                "catalogs": [{"name": "legal-adapters"}],
                "engine": {"maxLoraRank": 16, "maxCpuLoras": 16},
            },
        ),
        [snapshot("legal-adapters", ("contracts", 8), ("case-law", 64), ("patents", 128))],
    ),
    "pod-overrides": (
        loramodel(
            "private",
            {
                "baseModel": {"source": "file:///models/gemma-2-9b-it"},
                "image": "registry.internal/lorafleet/runtime:0.1.0-cu128",
                "serviceAccountName": "llm-serving",
                "env": [
                    {"name": "HF_HUB_OFFLINE", "value": "1"},
                    {
                        "name": "HF_TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
                    },
                ],
                "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "engine": {"extraArgs": {"enforce_eager": True, "max_num_seqs": 64}},
                "router": {"policy": "ray"},
                "replicas": {"min": 1, "max": 3},
                "upgradeStrategy": {
                    "type": "NewClusterWithIncrementalUpgrade",
                    "clusterUpgradeOptions": {
                        "gatewayClassName": "istio",
                        "stepSizePercent": 25,
                        "intervalSeconds": 60,
                    },
                },
            },
        ),
        [],
    ),
    "cpu-only": (
        loramodel(
            "tiny",
            {
                "baseModel": {"source": "file:///models/tiny"},
                "engine": {"dtype": "float32", "gpuMemoryUtilization": 0.2},
                "resources": {"accelerator": {"count": 0}, "cpu": 4, "memory": "8Gi"},
            },
        ),
        [],
    ),
}


def render(case: str) -> dict[str, Any]:
    obj, snapshots = CASES[case]
    return render_rayservice(obj, snapshots, CONFIG)


def serve_args(rayservice: Mapping[str, Any]) -> dict[str, Any]:
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (application,) = serve_config["applications"]
    args: dict[str, Any] = application["args"]
    return args


def worker_group(rayservice: Mapping[str, Any]) -> dict[str, Any]:
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    result: dict[str, Any] = group
    return result


def unknown_fields(obj: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Fields of ``obj`` that the schema does not declare: the API server would silently
    prune them, so a typo there would be lost without an error."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(obj, Mapping):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        for key, value in obj.items():
            if properties is not None and key in properties:
                found += unknown_fields(value, properties[key], f"{path}.{key}")
            elif isinstance(additional, Mapping):
                found += unknown_fields(value, additional, f"{path}.{key}")
            elif path != ".metadata":  # ObjectMeta is not spelled out in CRD schemas
                found.append(f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def apply_schema_defaults(obj: Any, schema: Mapping[str, Any]) -> Any:
    """What the API server stores: ``obj`` with the CRD's defaults filled in."""
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                apply_schema_defaults(obj[key], sub)
    elif isinstance(obj, list) and "items" in schema:
        for item in obj:
            apply_schema_defaults(item, schema["items"])
    return obj


def reversed_key_order(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {key: reversed_key_order(obj[key]) for key in reversed(list(obj))}
    if isinstance(obj, list):
        return [reversed_key_order(item) for item in obj]
    return obj


# ---------------------------------------------------------------- golden files


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_rayservice_matches_its_golden_file(case: str, update_golden: bool) -> None:
    rendered = dump_manifest(render(case))
    golden = GOLDEN_DIR / f"rayservice-{case}.yaml"
    if update_golden:
        golden.write_text(rendered)
    assert golden.exists(), f"missing {golden.name}: run pytest tests/unit --update-golden"
    assert rendered == golden.read_text(), f"{golden.name} differs: review, then --update-golden"
    # The readable golden file is exactly the object (block style changes no value).
    assert yaml.safe_load(golden.read_text()) == render(case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_rayservice_is_valid_for_kuberay(
    case: str, rayservice_schema: dict[str, Any]
) -> None:
    rayservice = render(case)
    jsonschema.Draft4Validator(rayservice_schema).validate(rayservice)
    assert unknown_fields(rayservice, rayservice_schema) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_inputs_are_valid_loramodels(case: str, loramodel_schema: dict[str, Any]) -> None:
    obj, _ = CASES[case]
    jsonschema.Draft4Validator(loramodel_schema).validate(obj)
    assert unknown_fields(obj, loramodel_schema) == []


def test_unknown_field_detection_catches_a_typo(rayservice_schema: dict[str, Any]) -> None:
    rayservice = render("minimal")
    rayservice["spec"]["excludeHeadPodFromServeSvcc"] = True
    assert unknown_fields(rayservice, rayservice_schema) == [".spec.excludeHeadPodFromServeSvcc"]


# ---------------------------------------------------------------- KubeRay facts


@pytest.mark.parametrize("case", sorted(CASES))
def test_head_has_no_gpus_and_the_five_named_ports(case: str) -> None:
    head = render(case)["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["num-cpus"] == "0"
    (container,) = head["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "serve": 8000,
        "metrics": 8080,
    }
    assert not any(key.endswith("gpu") for key in container["resources"]["limits"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_traffic_goes_to_a_service_named_after_the_loramodel(case: str) -> None:
    obj, _ = CASES[case]
    spec = render(case)["spec"]
    assert spec["excludeHeadPodFromServeSvc"] is True
    assert spec["serveService"]["metadata"]["name"] == obj["metadata"]["name"]
    assert spec["serveService"]["spec"]["ports"] == [{"name": "serve", "port": 8000}]
    assert "serviceUnhealthySecondThreshold" not in spec
    assert "deploymentUnhealthySecondThreshold" not in spec


@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_config_runs_the_lorafleet_runtime_with_one_max_loras(case: str) -> None:
    obj, _ = CASES[case]
    serve_config = yaml.safe_load(render(case)["spec"]["serveConfigV2"])
    (application,) = serve_config["applications"]
    assert application["import_path"] == RUNTIME_IMPORT_PATH
    assert application["route_prefix"] == "/"
    args = RuntimeArgs.from_serve_args(application["args"])
    # One field feeds both vLLM max_loras and Serve max_num_adapters_per_replica.
    assert args.engine.max_loras == obj["spec"].get("engine", {}).get("maxLoras", 4)


def test_owner_reference_makes_the_rayservice_garbage_collected_with_the_loramodel() -> None:
    (owner,) = render("minimal")["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "name": "qwen",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_without_uid_no_owner_reference_is_rendered() -> None:
    obj = copy.deepcopy(CASES["minimal"][0])
    del obj["metadata"]["uid"]
    assert "ownerReferences" not in render_rayservice(obj, [], CONFIG)["metadata"]


def test_fixed_replicas_need_no_autoscaler() -> None:
    rayservice = render("minimal")
    group = worker_group(rayservice)
    assert rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is False
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 1)
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"] == resources["limits"]


def test_autoscaling_between_min_and_max_gpu_workers() -> None:
    rayservice = render("gpu-autoscaling")
    group = worker_group(rayservice)
    assert rayservice["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 2, 6)
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "12", "memory": "96Gi", "nvidia.com/gpu": "1"}
    args = serve_args(rayservice)
    assert args["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 6,
        "target_ongoing_requests": 32,
    }
    assert args["accelerator_type"] == "A100"
    # Largest valid adapter rank is 32 -> vLLM needs max_lora_rank 32.
    assert args["engine"]["max_lora_rank"] == 32


def test_tensor_parallel_replicas_share_a_pod_of_eight_gpus() -> None:
    rayservice = render("tensor-parallel")
    group = worker_group(rayservice)
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    # 2..4 replicas of 4 GPUs each fit on 1..2 pods of 8 GPUs.
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 2)
    assert serve_args(rayservice)["engine"]["tensor_parallel_size"] == 4
    assert serve_args(rayservice)["autoscaling_config"]["max_replicas"] == 4


def test_long_loramodel_name_gets_a_short_rayservice_name_but_a_stable_url() -> None:
    rayservice = render("long-name")
    name = rayservice["metadata"]["name"]
    assert len(name) <= 47
    assert name == rayservice_name(LONG_NAME)
    assert rayservice["spec"]["serveService"]["metadata"]["name"] == LONG_NAME
    assert rayservice["metadata"]["labels"][LABEL_LORAMODEL] == LONG_NAME


def test_explicit_rank_limit_is_passed_to_the_engine_unchanged() -> None:
    assert serve_args(render("explicit-rank"))["engine"]["max_lora_rank"] == 16


def test_pod_overrides_reach_the_pods() -> None:
    rayservice = render("pod-overrides")
    cluster = rayservice["spec"]["rayClusterConfig"]
    head_pod = cluster["headGroupSpec"]["template"]["spec"]
    worker_pod = worker_group(rayservice)["template"]["spec"]
    for pod in (head_pod, worker_pod):
        assert pod["serviceAccountName"] == "llm-serving"
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        (container,) = pod["containers"]
        assert container["image"] == "registry.internal/lorafleet/runtime:0.1.0-cu128"
        assert container["env"][1] == {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
        }
    assert worker_pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert "nodeSelector" not in head_pod
    assert rayservice["spec"]["upgradeStrategy"]["type"] == "NewClusterWithIncrementalUpgrade"
    # KubeRay refuses incremental upgrades without its autoscaler.
    assert cluster["enableInTreeAutoscaling"] is True
    assert serve_args(rayservice)["engine"]["extra_engine_kwargs"] == {
        "enforce_eager": True,
        "max_num_seqs": 64,
    }


def test_cpu_only_workers_request_no_gpu() -> None:
    rayservice = render("cpu-only")
    limits = worker_group(rayservice)["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "4", "memory": "8Gi"}
    assert serve_args(rayservice)["use_gpu"] is False


def test_operator_config_supplies_image_and_default_sizes() -> None:
    config = OperatorConfig(default_image="example.com/rt:1", worker_cpu="3", worker_memory="7Gi")
    rayservice = render_rayservice(CASES["minimal"][0], [], config)
    container = worker_group(rayservice)["template"]["spec"]["containers"][0]
    assert container["image"] == "example.com/rt:1"
    assert container["resources"]["limits"]["cpu"] == "3"
    assert render("minimal")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ][0]["image"] == (DEFAULT_RUNTIME_IMAGE)


# ---------------------------------------------------------------- stability


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendering_is_byte_stable_and_ignores_input_key_order(case: str) -> None:
    obj, snapshots = CASES[case]
    first = render_rayservice(obj, snapshots, CONFIG)
    again = render_rayservice(copy.deepcopy(obj), snapshots, CONFIG)
    shuffled = render_rayservice(reversed_key_order(obj), list(reversed(snapshots)), CONFIG)
    assert dump_manifest(first) == dump_manifest(again) == dump_manifest(shuffled)
    assert first["spec"]["serveConfigV2"] == shuffled["spec"]["serveConfigV2"]
    hashes = {r["metadata"]["annotations"][ANNOTATION_SPEC_HASH] for r in (first, shuffled)}
    assert len(hashes) == 1


def test_reordering_catalogs_changes_nothing() -> None:
    obj, snapshots = CASES["gpu-autoscaling"]
    reordered = copy.deepcopy(obj)
    reordered["spec"]["catalogs"].reverse()
    assert render_rayservice(reordered, snapshots, CONFIG) == render("gpu-autoscaling")


def test_api_server_defaults_do_not_change_the_rendering(
    loramodel_schema: dict[str, Any],
) -> None:
    # The operator reads objects with the CRD's defaults applied; `lorafleet render` reads
    # files without them. Both must produce the same RayService.
    for case, (obj, snapshots) in CASES.items():
        stored = apply_schema_defaults(copy.deepcopy(obj), loramodel_schema)
        assert render_rayservice(stored, snapshots, CONFIG) == render(case), case
    minimal = apply_schema_defaults(copy.deepcopy(CASES["minimal"][0]), loramodel_schema)
    assert minimal["spec"]["engine"] == {
        "kind": "vllm",
        "maxLoras": 4,
        "tensorParallelSize": 1,
        "dtype": "auto",
    }


# The catalog starts with adapters of rank 8 and 16: vLLM's rank bucket 16.
ADAPTERS_BEFORE = snapshot("legal-adapters", ("contracts", 8), ("nda", 16))
ADAPTER_CHANGES = {
    "adapters added": [
        snapshot("legal-adapters", ("contracts", 8), ("nda", 16), ("memo", 12), ("tax", 16))
    ],
    "an adapter removed": [snapshot("legal-adapters", ("nda", 16))],
    "every adapter removed": [snapshot("legal-adapters")],
    "the catalog deleted": [CatalogSnapshot.missing("legal-adapters", "demo")],
}


@pytest.mark.parametrize("change", sorted(ADAPTER_CHANGES))
def test_adapter_changes_within_a_rank_bucket_touch_neither_cluster_nor_serve_config(
    change: str,
) -> None:
    obj = loramodel(
        "legal",
        {
            "baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"},
            "catalogs": [{"name": "legal-adapters"}],
        },
    )
    before = render_rayservice(obj, [ADAPTERS_BEFORE], CONFIG)
    after = render_rayservice(obj, ADAPTER_CHANGES[change], CONFIG)
    assert after["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
    assert after["spec"]["serveConfigV2"] == before["spec"]["serveConfigV2"]
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]


def test_a_larger_rank_bucket_updates_serve_config_in_place_only() -> None:
    obj = loramodel(
        "legal",
        {
            "baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"},
            "catalogs": [{"name": "legal-adapters"}],
        },
    )
    before = render_rayservice(obj, [ADAPTERS_BEFORE], CONFIG)
    after = render_rayservice(
        obj, [snapshot("legal-adapters", ("contracts", 8), ("nda", 16), ("big", 64))], CONFIG
    )
    assert after["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
    assert serve_args(after)["engine"]["max_lora_rank"] == 64
    assert (
        after["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        != before["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    )


def test_the_engine_kind_reaches_the_runtime_only_when_it_is_not_the_default() -> None:
    # vLLM models render as before the field existed: an operator upgrade redeploys nothing.
    obj = copy.deepcopy(CASES["minimal"][0])
    assert "kind" not in serve_args(render_rayservice(obj, [], CONFIG))["engine"]
    obj["spec"]["engine"] = {"kind": "vllm"}
    assert render_rayservice(obj, [], CONFIG) == render("minimal")
    obj["spec"]["engine"] = {"kind": "peft"}
    peft = render_rayservice(obj, [], CONFIG)
    assert serve_args(peft)["engine"]["kind"] == "peft"
    assert RuntimeArgs.from_serve_args(serve_args(peft)).engine.engine_kind == "peft"
    assert peft["spec"]["rayClusterConfig"] == render("minimal")["spec"]["rayClusterConfig"]


def test_a_spec_edit_changes_the_hash_annotation() -> None:
    obj = copy.deepcopy(CASES["minimal"][0])
    before = render_rayservice(obj, [], CONFIG)
    obj["spec"]["engine"] = {"maxLoras": 5}
    after = render_rayservice(obj, [], CONFIG)
    assert (
        after["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        != before["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    )


# ---------------------------------------------------------------- invalid input


def _crd_messages(loramodel_crd: Mapping[str, Any]) -> set[str]:
    messages: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for rule in node.get("x-kubernetes-validations", []):
                messages.add(rule["message"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(loramodel_crd)
    return messages


INVALID_SPECS: dict[str, dict[str, Any]] = {
    "min above max": {"replicas": {"min": 3, "max": 2}},
    "max zero": {"replicas": {"min": 0}},
    "cpu cache below max loras": {"engine": {"maxLoras": 8, "maxCpuLoras": 4}},
    "gpus not a multiple of tp": {
        "engine": {"tensorParallelSize": 4},
        "resources": {"accelerator": {"count": 6}},
    },
    "non-gpu resource": {"resources": {"accelerator": {"resourceName": "example.com/fpga"}}},
    "colon in model id": {"modelId": "qwen:latest"},
    "bad source": {"baseModel": {"source": "https://example.com/model"}},
    "incremental without options": {
        "upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade"}
    },
    "env value and valueFrom": {
        "env": [
            {
                "name": "A",
                "value": "1",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
            }
        ]
    },
    "vllm arguments for peft": {"engine": {"kind": "peft", "extraArgs": {"enforce_eager": True}}},
    "vllm cache for peft": {"engine": {"kind": "peft", "maxCpuLoras": 8}},
    "tensor parallel peft": {"engine": {"kind": "peft", "tensorParallelSize": 2}},
    "toleration Exists with value": {
        "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]
    },
}


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_render_refuses_what_the_api_server_refuses_with_the_same_message(
    case: str, loramodel_crd: dict[str, Any]
) -> None:
    spec = {"baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"}, **INVALID_SPECS[case]}
    with pytest.raises(InvalidSpecError) as caught:
        render_rayservice(loramodel("qwen", spec), [], CONFIG)
    assert caught.value.reason == "InvalidSpec"
    assert any(message in str(caught.value) for message in _crd_messages(loramodel_crd)), str(
        caught.value
    )


def test_unsupported_rank_and_unknown_field_are_named_by_their_path() -> None:
    spec = {
        "baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"},
        "engine": {"maxLoraRank": 24, "maxLora": 2},
    }
    with pytest.raises(InvalidSpecError) as caught:
        render_rayservice(loramodel("qwen", spec), [], CONFIG)
    assert "spec.engine.maxLoraRank" in caught.value.message
    assert "spec.engine.maxLora:" in caught.value.message


def test_managed_engine_arguments_cannot_be_smuggled_through_extra_args() -> None:
    spec = {
        "baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"},
        "engine": {"extraArgs": {"max_loras": 64}},
    }
    with pytest.raises(InvalidSpecError, match="max_loras"):
        render_rayservice(loramodel("qwen", spec), [], CONFIG)


@pytest.mark.parametrize("name", ["Qwen", "1qwen", "qwen.eu", "q" * 64])
def test_loramodel_names_that_cannot_name_a_service_are_refused(name: str) -> None:
    obj = loramodel(name, {"baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"}})
    with pytest.raises(InvalidSpecError, match="DNS-1035"):
        render_rayservice(obj, [], CONFIG)
