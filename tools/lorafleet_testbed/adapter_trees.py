"""Adapter folders for catalog tests and benchmarks: real PEFT adapters, every kind of broken
folder lorafleet must recognise, and uploads of a folder tree to S3 or GCS."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import struct
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


def safetensors_bytes(payload: bytes, name: str = "weight") -> bytes:
    """A valid safetensors file holding ``payload`` as one U8 tensor (what a test needs when
    only the bytes matter, not the numbers)."""
    header = json.dumps(
        {name: {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}
    ).encode()
    return struct.pack("<Q", len(header)) + header + payload


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
    # The same model name under another owner is another model, whatever the case.
    _edit_config(
        broken("other-owner", "BaseModelMismatch"),
        lambda c: c.update(base_model_name_or_path="Someone/" + TINY_MODEL_ID.split("/")[-1]),
    )
    # JSON nested deeper than Python's parser recurses (a crash of the whole sync, once).
    folder = broken("config-deep", "ConfigNotJson")
    (folder / "adapter_config.json").write_text("[" * 200_000 + "]" * 200_000)
    # Names equal but for case: both refused, neither served under the other's name.
    broken("faq", "NameClash")
    broken("FAQ", "NameClash")
    # Stray files directly under the catalog's folder are ignored.
    (root / "README.md").write_text("Adapters for the support bot.\n")
    (root / "index.json").write_text("{}\n")
    return expected


# Spellings of the catalog's baseModel (TINY_MODEL_ID) an adapter may have been trained
# under: the same model (hub ids ignore case; hf:// and trailing slashes are dropped; a local
# path matches on its last component).
SAME_BASE_MODEL_SPELLINGS: Final = {
    "base-upper-case": TINY_MODEL_ID.upper(),
    "base-hf-prefix": f"hf://{TINY_MODEL_ID}/",
    "base-local-path": "/models/" + TINY_MODEL_ID.split("/")[-1].title(),
}


def write_weight_kinds(root: Path) -> dict[str, str | None]:
    """Copies of ``root/support-v1`` whose adapter_model.safetensors is not a safetensors file
    (a pickle, a torch.save zip, random bytes, a truncated file, a header length past the
    end). A mounted catalog refuses them (WeightsNotSafetensors, from the file's first bytes);
    S3 and GCS catalogs do not read weight files, and the runtime refuses them after the
    download. Returns the reason a mounted catalog gives per adapter name."""
    real = (root / "support-v1" / "adapter_model.safetensors").read_bytes()
    bodies = {
        # What torch.save wrote before it zipped: a pickle; and its zip format since 1.6.
        "weights-pickle": pickle.dumps({"lora_A": [0.0] * 64}, protocol=2),
        "weights-torch-zip": b"PK\x03\x04" + bytes(range(256)) * 16,
        "weights-random": random.Random(14).randbytes(40_000),  # noqa: S311  (test data)
        # A real file cut short: the header promises more tensor bytes than there are.
        "weights-truncated": real[: len(real) // 2],
        # A header length longer than the whole file.
        "weights-header-overrun": struct.pack("<Q", len(real) + 1) + real[8:],
    }
    for name, body in bodies.items():
        shutil.copytree(root / "support-v1", root / name)
        (root / name / "adapter_model.safetensors").write_bytes(body)
    return dict.fromkeys(bodies, "WeightsNotSafetensors")


def write_base_model_spellings(root: Path) -> dict[str, str | None]:
    """Copies of ``root/support-v1`` trained on :data:`SAME_BASE_MODEL_SPELLINGS`: all valid.
    Kept out of :func:`write_catalog_tree` so its counts and rank histogram stay as they are."""
    for name, spelling in SAME_BASE_MODEL_SPELLINGS.items():
        shutil.copytree(root / "support-v1", root / name)
        path = root / name / "adapter_config.json"
        path.write_text(
            json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": spelling})
        )
    return dict.fromkeys(SAME_BASE_MODEL_SPELLINGS)


def write_link_kinds(root: Path, outside: Path) -> dict[str, str | None]:
    """Symbolic links in a mounted catalog (``file://`` only: S3 and GCS have none), next to
    the folders of :func:`write_catalog_tree` in ``root``; ``outside`` is a folder outside
    ``root`` for links to point at. Every folder with a link is refused (Symlink), whether the
    link leaves the catalog or not. Returns the expected reason per adapter name."""
    template = root / "support-v1"
    outside.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template, outside / "elsewhere", dirs_exist_ok=True)
    expected: dict[str, str | None] = {}

    def copy(name: str) -> Path:
        shutil.copytree(template, root / name)
        expected[name] = "Symlink"
        return root / name

    weights = copy("link-to-passwd") / "adapter_model.safetensors"
    weights.unlink()
    weights.symlink_to("/etc/passwd")
    config = copy("link-config-outside") / "adapter_config.json"
    config.unlink()
    config.symlink_to(outside / "elsewhere" / "adapter_config.json")
    copy("link-dir-outside-inside").joinpath("extra").symlink_to(outside / "elsewhere")
    weights = copy("link-inside") / "adapter_model.safetensors"
    weights.unlink()
    weights.symlink_to(Path("..") / "support-v1" / "adapter_model.safetensors")
    # The adapter folder itself a link to a complete adapter outside the catalog.
    (root / "link-folder-outside").symlink_to(outside / "elsewhere", target_is_directory=True)
    expected["link-folder-outside"] = "Symlink"
    return expected


def tree_files(root: Path) -> list[tuple[str, Path]]:
    """(key relative to ``root``, path) of every regular file, sorted; symbolic links (which
    object stores cannot hold) are left out, never followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
        for filename in filenames:
            path = base / filename
            if not path.is_symlink() and path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


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
    "SAME_BASE_MODEL_SPELLINGS",
    "TINY_MODEL_ID",
    "VALID_ADAPTERS",
    "build_real_adapters",
    "safetensors_bytes",
    "tree_files",
    "upload_gcs",
    "upload_s3",
    "write_base_model_spellings",
    "write_catalog_tree",
    "write_link_kinds",
    "write_weight_kinds",
]
