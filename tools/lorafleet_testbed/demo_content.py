"""What `make demo` puts in its bucket and asks its endpoint: the tiny model, a few adapters
(plus one broken on purpose) and the OpenAI client calls a user would make."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lorafleet_testbed.adapter_trees import tree_files, upload_s3
from lorafleet_testbed.tinymodel import build_lora_adapter, build_tiny_model

BUCKET: Final = "lorafleet-demo"
MODEL_PREFIX: Final = "models/tiny-qwen2/"
ADAPTER_PREFIX: Final = "adapters/"
# Valid adapters (name: seed) and the broken one: trained, says its config, for another base
# model, so the catalog lists it as invalid with a reason.
ADAPTERS: Final = {"support-v1": 1, "billing": 2, "legal": 3}
BROKEN: Final = "wrong-base"
BROKEN_REASON: Final = "BaseModelMismatch"


@dataclass(frozen=True)
class DemoFiles:
    base: Path
    adapters: dict[str, Path]


def build_demo_files(cache: Path) -> DemoFiles:
    """The tiny model and the demo's adapters, generated once into ``cache``."""
    base = build_tiny_model(cache / "base")
    adapters = {
        name: build_lora_adapter(base, cache / "adapters" / name, seed=seed)
        for name, seed in ADAPTERS.items()
    }
    broken = cache / "adapters" / BROKEN
    if not broken.exists():
        shutil.copytree(adapters["support-v1"], broken)
        config_path = broken / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = "Qwen/Qwen2.5-0.5B-Instruct"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    adapters[BROKEN] = broken
    return DemoFiles(base, adapters)


def fill_bucket(s3: Any, files: DemoFiles, *, skip: tuple[str, ...] = ()) -> int:
    """Create the bucket (if needed) and upload the model and every adapter but ``skip``;
    returns how many files were put."""
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        s3.create_bucket(Bucket=BUCKET)
    count = upload_s3(s3, BUCKET, MODEL_PREFIX, tree_files(files.base))
    for name, folder in files.adapters.items():
        if name not in skip:
            count += upload_adapter(s3, name, folder)
    return count


def upload_adapter(s3: Any, name: str, folder: Path) -> int:
    """Put one adapter folder at ``adapters/<name>/``: what a user does to publish one."""
    return upload_s3(s3, BUCKET, f"{ADAPTER_PREFIX}{name}/", tree_files(folder))


def remove_adapter(s3: Any, name: str) -> int:
    """Delete ``adapters/<name>/``: what a user does to withdraw one; returns how many files."""
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{ADAPTER_PREFIX}{name}/")
    keys = [{"Key": item["Key"]} for item in listed.get("Contents", [])]
    if keys:
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})
    return len(keys)


def ask(base_url: str, model_id: str, adapters: list[str], *, max_tokens: int = 12) -> list[str]:
    """The OpenAI client calls of the demo: the base model, then each adapter, the last one
    streamed. Returns printable lines. (The tiny model has random weights: its words mean
    nothing; that the base model and each adapter answer differently is what shows.)"""
    from openai import OpenAI

    client: Any = OpenAI(base_url=base_url, api_key="unused", max_retries=2, timeout=120)
    lines = []
    served = sorted(m.id for m in client.models.list().data)
    lines.append(f"GET /v1/models -> {', '.join(served)}")
    question = [{"role": "user", "content": "How do I reset my password?"}]
    for model in [model_id, *[f"{model_id}:{a}" for a in adapters[:-1]]]:
        reply = client.chat.completions.create(
            model=model, messages=question, max_tokens=max_tokens, temperature=0, seed=1
        )
        tokens = reply.usage.completion_tokens if reply.usage else "?"
        lines.append(f"{model} ({tokens} tokens): {_shown(reply.choices[0].message.content)}")
    if adapters:
        model = f"{model_id}:{adapters[-1]}"
        stream = client.chat.completions.create(
            model=model,
            messages=question,
            max_tokens=max_tokens,
            temperature=0,
            seed=1,
            stream=True,
        )
        pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        lines.append(f"{model} (streamed, {len(pieces)} chunks): {_shown(''.join(pieces))}")
    return lines


def _shown(text: str | None) -> str:
    """The answer as printed: quoted, and said plainly when the random model's tokens have no
    visible characters (special tokens are dropped when decoding), so '' does not look like a
    failure."""
    if text and text.strip():
        return repr(text)
    return f"{text or ''!r} (its tokens decode to no visible text: random weights)"
