"""Adapter folders for catalog tests and benchmarks: real PEFT adapters, every kind of broken
folder lorafleet must recognise, and uploads of a folder tree to S3 or GCS."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from lorafleet_testbed.tinymodel import TINY_MODEL_ID, build_lora_adapter, build_tiny_model

# maxAdapterSize the expected reasons assume (the "too-large" folder exceeds it).
MAX_ADAPTER_SIZE: Final = "2Mi"
VALID_ADAPTERS: Final = {"support-v1": 8, "support-v2": 16, "billing": 8}
# Valid folders of write_catalog_tree (rank 8, copies of support-v1) that only some engines
# serve, with the reason per engine kind that refuses them.
ENGINE_SPECIFIC_ADAPTERS: Final[dict[str, dict[str, str]]] = {
    "modules-to-save": {"vllm": "ModulesToSave"},
    "dora": {"vllm": "UnsupportedOption", "peft": "UnsupportedOption"},
}
# Valid folders of write_catalog_tree.
VALID_FOLDERS: Final = len(VALID_ADAPTERS) + len(ENGINE_SPECIFIC_ADAPTERS)


def build_real_adapters(cache: Path) -> dict[str, Path]:
    """Real adapters (rank per VALID_ADAPTERS) for the tiny model, built once into ``cache``."""
    base = build_tiny_model(cache / "base")
    return {
        name: build_lora_adapter(base, cache / "adapters" / name, seed=i, rank=rank)
        for i, (name, rank) in enumerate(VALID_ADAPTERS.items())
    }


def _edit_config(folder: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def write_catalog_tree(root: Path, adapters: dict[str, Path]) -> dict[str, str | None]:
    """Fill ``root`` with valid adapters, adapters only some engines serve
    (:data:`ENGINE_SPECIFIC_ADAPTERS`: valid for the catalog), broken folders and stray files.

    Returns the expected reason per adapter name (None: valid), for a catalog with
    ``baseModel: lorafleet/tiny-qwen2`` and ``maxAdapterSize: 2Mi``."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    template = adapters["support-v1"]
    expected: dict[str, str | None] = {}

    for name, source in adapters.items():
        shutil.copytree(source, root / name)
        expected[name] = None

    def broken(name: str, reason: str | None) -> Path:
        folder = root / name
        shutil.copytree(template, folder)
        expected[name] = reason
        return folder

    _edit_config(broken("modules-to-save", None), lambda c: c.update(modules_to_save=["lm_head"]))
    _edit_config(broken("dora", None), lambda c: c.update(use_dora=True))

    broken("bad:name", "NameInvalid")
    folder = broken("too-large", "TooLarge")
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * (3 * 1024 * 1024))
    folder = broken("nested-group", "Nested")
    inner = folder / "inner-adapter"
    inner.mkdir()
    for child in list(folder.iterdir()):
        if child != inner:
            shutil.move(str(child), str(inner / child.name))
    folder = broken("no-config", "ConfigMissing")
    (folder / "adapter_config.json").unlink()
    folder = broken("config-too-large", "ConfigTooLarge")
    (folder / "adapter_config.json").write_text("{" + " " * (1024 * 1024 + 10) + "}")
    folder = broken("not-json", "ConfigNotJson")
    (folder / "adapter_config.json").write_text("{'r': 8,")
    folder = broken("json-list", "ConfigNotObject")
    (folder / "adapter_config.json").write_text("[8, 16]")
    _edit_config(broken("prefix-tuning", "NotLora"), lambda c: c.update(peft_type="PREFIX_TUNING"))
    _edit_config(broken("no-rank", "RankMissing"), lambda c: c.pop("r"))
    _edit_config(broken("rank-as-text", "RankInvalid"), lambda c: c.update(r="8"))
    _edit_config(broken("rank-zero", "RankInvalid"), lambda c: c.update(r=0))
    _edit_config(broken("alpha-negative", "AlphaInvalid"), lambda c: c.update(lora_alpha=-16))
    _edit_config(broken("no-targets", "TargetModulesMissing"), lambda c: c.pop("target_modules"))
    folder = broken("no-weights", "WeightsMissing")
    (folder / "adapter_model.safetensors").unlink()
    folder = broken("empty-weights", "WeightsEmpty")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    _edit_config(
        broken("other-base", "BaseModelMismatch"),
        lambda c: c.update(base_model_name_or_path="meta-llama/Llama-3.1-8B"),
    )
    # Stray files directly under the catalog's folder are ignored.
    (root / "README.md").write_text("Adapters for the support bot.\n")
    (root / "index.json").write_text("{}\n")
    return expected


def tree_files(root: Path) -> list[tuple[str, Path]]:
    """(key relative to ``root``, path) of every file, sorted."""
    return sorted(
        (path.relative_to(root).as_posix(), path) for path in root.rglob("*") if path.is_file()
    )


def upload_s3(client: Any, bucket: str, prefix: str, files: Iterable[tuple[str, Path]]) -> int:
    """Put every file under ``prefix`` in parallel; returns how many."""
    items = list(files)

    def put(item: tuple[str, Path]) -> None:
        key, path = item
        client.put_object(Bucket=bucket, Key=prefix + key, Body=path.read_bytes())

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, items))
    return len(items)


def upload_gcs(bucket: Any, prefix: str, files: Iterable[tuple[str, Path]]) -> int:
    items = list(files)

    def put(item: tuple[str, Path]) -> None:
        key, path = item
        bucket.blob(prefix + key).upload_from_filename(str(path))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, items))
    return len(items)


__all__ = [
    "MAX_ADAPTER_SIZE",
    "TINY_MODEL_ID",
    "VALID_ADAPTERS",
    "build_real_adapters",
    "tree_files",
    "upload_gcs",
    "upload_s3",
    "write_catalog_tree",
]
