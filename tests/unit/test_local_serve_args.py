"""`lorafleet serve` turns the example LoRAModel into runtime arguments this machine can run:
no accelerator type Ray would wait for, vLLM's CPU settings, one replica, and catalogs that no
file defines served without adapters instead of refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lorafleet_cli.local_serve import (
    LocalCatalog,
    local_runtime_args,
    missing_catalogs,
    pick_documents,
    publish,
)
from lorafleet_operator.constants import DEFAULT_MAX_LORA_RANK
from lorafleet_testbed.toolchain import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"


def _docs(*names: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in names:
        docs.extend(d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d)
    return docs


def test_the_example_runs_on_cpu_without_its_accelerator_and_with_one_replica(
    tmp_path: Path,
) -> None:
    model_obj, _ = pick_documents(_docs("lora-model.yaml"))
    args = local_runtime_args(
        model_obj, {}, index_dir=tmp_path, model_source=str(tmp_path), cpu=True
    )
    assert args.accelerator_type is None  # the example asks for an L4
    assert args.use_gpu is False
    assert args.engine.dtype == "float32"  # the example says bfloat16
    assert args.engine.extra_engine_kwargs["enforce_eager"] is True
    assert (args.autoscaling_config.min_replicas, args.autoscaling_config.max_replicas) == (1, 1)
    assert args.model_source == f"file://{tmp_path.resolve()}"
    assert args.catalog_index_dir == str(tmp_path)
    # What the example sets survives: model id, context length, adapter slots.
    assert args.model_id == "qwen2.5-0.5b"
    assert args.engine.max_model_len == 4096
    assert args.engine.max_loras == 8


def test_on_a_gpu_the_accelerator_type_and_replicas_stay(tmp_path: Path) -> None:
    model_obj, _ = pick_documents(_docs("lora-model.yaml"))
    args = local_runtime_args(model_obj, {}, index_dir=tmp_path, model_source=None, cpu=False)
    assert args.accelerator_type == "L4"
    assert args.autoscaling_config.max_replicas == 4
    assert args.model_source == "Qwen/Qwen2.5-0.5B-Instruct"


def test_a_catalog_no_file_defines_is_reported_and_kept_without_adapters(
    tmp_path: Path,
) -> None:
    model_obj, given = pick_documents(_docs("lora-model.yaml"))
    assert missing_catalogs(model_obj, given) == ["support-adapters"]
    args = local_runtime_args(model_obj, {}, index_dir=tmp_path, model_source=None, cpu=True)
    # Still named, as in a cluster before the catalog exists: its index is simply absent.
    assert [c.name for c in args.catalogs] == ["support-adapters"]


def test_with_the_example_catalog_nothing_is_missing(tmp_path: Path) -> None:
    model_obj, given = pick_documents(_docs("lora-model.yaml", "adapter-catalog.yaml"))
    assert missing_catalogs(model_obj, given) == []
    # Not scanned yet (storage unreachable): no rank evidence, vLLM's default rank.
    catalogs = {"support-adapters": LocalCatalog(given["support-adapters"])}
    args = local_runtime_args(model_obj, catalogs, index_dir=tmp_path, model_source=None, cpu=True)
    assert args.engine.max_lora_rank == DEFAULT_MAX_LORA_RANK


def test_a_failed_rescan_keeps_the_last_good_adapters(tmp_path: Path) -> None:
    folder = tmp_path / "adapters" / "support-v1"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}'
    )
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    catalog_obj = {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "AdapterCatalog",
        "metadata": {"name": "local"},
        "spec": {"source": {"uri": f"file://{tmp_path / 'adapters'}"}},
    }
    _, given = pick_documents([*_docs("lora-model.yaml"), catalog_obj])
    local = LocalCatalog(given["local"])
    local.rescan()
    assert local.records is not None and [r.name for r in local.records] == ["support-v1"]
    (tmp_path / "adapters").rename(tmp_path / "gone")  # the volume disappears
    local.rescan()
    assert [r.name for r in local.records] == ["support-v1"]


def test_a_catalog_never_scanned_has_no_index(tmp_path: Path) -> None:
    _, given = pick_documents(_docs("lora-model.yaml", "adapter-catalog.yaml"))
    publish(tmp_path, {"support-adapters": LocalCatalog(given["support-adapters"])})
    assert list(tmp_path.iterdir()) == []  # not an empty index: none at all
