"""lorafleet's Serve application on the transformers + PEFT engine (``engine.kind: peft``),
on real Ray Serve on CPU, behind the same ingress, catalogs, disk cache, router and errors as
the vLLM engine: what a client sees, and that concurrent requests for different adapters run
in one forward pass."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorafleet_testbed.controlplane import ControlPlane
from lorafleet_testbed.tinymodel import build_lora_adapter

from .conftest import APP_NAME, MODEL_ID, Catalogs, Deployment, eventually, serve_lorafleet

pytestmark = pytest.mark.runtime

SERVER_DEPLOYMENT = f"PeftServer:{MODEL_ID}"
MAX_LORAS = 3
PROMPT = "The quick brown fox"
# Added to the local catalog by this module: an adapter that also replaces lm_head
# (modules_to_save: vLLM refuses it, PEFT serves it), a DoRA adapter (PEFT cannot mix it into
# a batch) and one whose weights vanish after the catalog validated it.
MODULES_TO_SAVE = "peft-mts"
DORA = "peft-dora"
GONE = "peft-gone"


@pytest.fixture(scope="module")
def deployment(
    catalogs: Catalogs, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    local = catalogs.local_dir
    built = catalogs.root / "built"
    base = catalogs.base_model
    folders = {
        MODULES_TO_SAVE: build_lora_adapter(
            base, built / MODULES_TO_SAVE, seed=3, modules_to_save=("lm_head",)
        ),
        DORA: build_lora_adapter(base, built / DORA, seed=5, use_dora=True),
        GONE: catalogs.build_adapter(GONE, 4),
    }
    for name, folder in folders.items():
        shutil.copytree(folder, local / name, dirs_exist_ok=True)
    catalogs.publish("local-loras")
    (local / GONE / "adapter_model.safetensors").unlink()
    # The LoRAModel as a user writes it for the PEFT engine (no vLLM-only settings).
    spec = {
        "engine": {"kind": "peft", "maxLoras": MAX_LORAS, "maxLoraRank": 8, "dtype": "float32"},
    }
    with serve_lorafleet(
        catalogs, control_plane, tmp_path_factory.mktemp("adapter-cache"), spec=spec
    ) as served:
        yield served


def _server(method: str, *args: Any) -> Any:
    from ray import serve

    handle = serve.get_deployment_handle(SERVER_DEPLOYMENT, app_name=APP_NAME)
    return getattr(handle, method).remote(*args).result(timeout_s=60)


def _post(
    deployment: Deployment, model: str, path: str = "completions", **body: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    if path == "completions":
        body.setdefault("prompt", PROMPT)
    body = {"model": model, "max_tokens": 8, "temperature": 0, **body}
    request = urllib.request.Request(
        f"{deployment.base_url}/{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def _get(deployment: Deployment, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{deployment.base_url}/{path}", timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def _tokens(deployment: Deployment, model: str, max_tokens: int = 12) -> list[int]:
    status, body, _ = _post(
        deployment, model, max_tokens=max_tokens, ignore_eos=True, return_token_ids=True
    )
    assert status == 200, body
    tokens: list[int] = body["choices"][0]["token_ids"]
    assert len(tokens) == max_tokens
    return tokens


def _reference(catalogs: Catalogs, adapter_folder: Path | None, max_tokens: int) -> list[int]:
    """Greedy tokens of a plain PeftModel holding only that adapter (None: the base)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(catalogs.base_model)
    model: Any = AutoModelForCausalLM.from_pretrained(catalogs.base_model, dtype=torch.float32)
    if adapter_folder is not None:
        model = PeftModel.from_pretrained(model, adapter_folder)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=config)
    return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]


def _built(catalogs: Catalogs, name: str) -> Path:
    return catalogs.root / "built" / f"{name}-{catalogs.seeds[name]}"


# ------------------------------------------------------------------------ answers
def test_base_and_adapters_from_s3_gcs_and_local_match_single_adapter_peft(
    deployment: Deployment,
) -> None:
    catalogs = deployment.catalogs
    outputs: dict[str, list[int]] = {}
    for name in (None, "a0", "g0", "l0"):
        model = MODEL_ID if name is None else f"{MODEL_ID}:{name}"
        outputs[model] = _tokens(deployment, model)
        expected = _reference(catalogs, None if name is None else _built(catalogs, name), 12)
        assert outputs[model] == expected, model
    assert len({tuple(t) for t in outputs.values()}) == len(outputs), outputs


def test_concurrent_requests_for_three_adapters_run_in_one_forward_pass(
    deployment: Deployment,
) -> None:
    adapters = ["a1", "g1", "l1"]
    solo = {name: _tokens(deployment, f"{MODEL_ID}:{name}", 48) for name in adapters}
    before = _server("peft_stats")["adapters_per_forward"]
    models = [f"{MODEL_ID}:{name}" for name in adapters] * 2 + [MODEL_ID] * 2
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(models)) as pool:
        got = list(pool.map(lambda m: _tokens(deployment, m, 48), models))
    for model, tokens in zip(models, got, strict=True):
        if model != MODEL_ID:
            assert tokens == solo[model.split(":")[1]], model
    after = _server("peft_stats")["adapters_per_forward"]
    mixed = sum(after.get(k, 0) - before.get(k, 0) for k in after if int(k) >= 3)
    # Many decode steps each advanced rows of all three adapters (and the base model).
    assert mixed >= 10, (before, after)


def test_streaming_yields_the_same_text_in_several_chunks(deployment: Deployment) -> None:
    import openai

    client = openai.OpenAI(base_url=deployment.base_url, api_key="unused", max_retries=0)
    model = f"{MODEL_ID}:a1"
    whole = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=16, temperature=0, extra_body={"ignore_eos": True}
    )
    stream = client.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=16,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces = [chunk.choices[0].text for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == whole.choices[0].text
    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "The quick brown fox"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(chat)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in {"length", "stop"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8


def test_chat_uses_the_base_models_chat_template(deployment: Deployment) -> None:
    status, body, _ = _post(
        deployment,
        f"{MODEL_ID}:g0",
        "chat/completions",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
    )
    assert status == 200, body
    # "<|user|>hi\n<|assistant|>": the tiny model's template, as the tokenizer renders it.
    assert body["usage"]["prompt_tokens"] == 5
    assert body["choices"][0]["message"]["role"] == "assistant"


def test_more_adapters_than_max_loras_rotate_and_evicted_ones_leave_the_peft_model(
    deployment: Deployment,
) -> None:
    order = ["a0", "g1", "l1", "a2", "a3", "a0"]
    first: dict[str, list[int]] = {}
    one_adapter = None
    for name in order:
        tokens = _tokens(deployment, f"{MODEL_ID}:{name}", 6)
        first.setdefault(name, tokens)
        assert tokens == first[name], f"{name} answered differently after being reloaded"
        residency = _server("residency")
        stats = _server("peft_stats")
        assert name in residency["engine"] and name in residency["gpu"], residency
        assert len(residency["engine"]) <= MAX_LORAS, residency
        # What the PeftModel holds is exactly what the report says is loaded.
        assert len(stats["peft_adapters"]) == len(residency["engine"]), stats
        assert sorted(k.split(":")[1] for k in stats["adapters"]) == residency["engine"]
        per_adapter = stats["adapter_bytes"] / len(stats["peft_adapters"])
        one_adapter = one_adapter or per_adapter
        assert per_adapter == one_adapter  # evicted weights do not linger
    residency = _server("residency")
    assert len(residency["engine"]) == MAX_LORAS, residency
    # Which ones stay is the eviction policy's choice (the least requested go); the
    # evicted ones are still on local disk for a quick reload.
    evicted = set(order) - set(residency["engine"])
    assert len(evicted) >= len(set(order)) - MAX_LORAS
    assert evicted <= set(residency["disk"])
    assert _server("record_routing_stats")["lorafleet"]["engine"] == residency["engine"]


def test_adapter_with_modules_to_save_is_served(deployment: Deployment) -> None:
    model = f"{MODEL_ID}:{MODULES_TO_SAVE}"
    assert model in {m["id"] for m in _get(deployment, "models")["data"]}
    status, body, _ = _post(deployment, model)
    assert status == 200, body
    catalogs = deployment.catalogs
    expected = _reference(catalogs, catalogs.root / "built" / MODULES_TO_SAVE, 12)
    assert _tokens(deployment, model) == expected
    # In a batch with adapters that do not replace lm_head, each row keeps its own head.
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda m: _tokens(deployment, m), [model, f"{MODEL_ID}:a0", model]))
    assert got[0] == got[2] == expected


# ------------------------------------------------------------------------ errors
def test_unknown_adapter_is_404_at_the_ingress(deployment: Deployment) -> None:
    status, body, _ = _post(deployment, f"{MODEL_ID}:no-such-adapter")
    assert status == 404
    assert body["error"]["type"] == "NotFoundError"
    assert "none of the catalogs" in body["error"]["message"]


def test_invalid_or_incompatible_adapters_are_422_with_the_reason(
    deployment: Deployment,
) -> None:
    status, body, _ = _post(deployment, f"{MODEL_ID}:{DORA}")
    assert status == 422
    assert body["error"]["type"] == "UnsupportedOption"
    assert "DoRA" in body["error"]["message"]
    status, body, _ = _post(deployment, f"{MODEL_ID}:broken")
    assert status == 422
    assert "invalid" in body["error"]["message"]
    listed = {m["id"] for m in _get(deployment, "models")["data"]}
    assert f"{MODEL_ID}:{DORA}" not in listed and f"{MODEL_ID}:broken" not in listed


def test_rank_above_max_lora_rank_is_served_peft_has_no_slots(deployment: Deployment) -> None:
    # "wide" has rank 16; maxLoraRank 8 sizes vLLM's LoRA slots and means nothing to PEFT.
    catalogs = deployment.catalogs
    assert _tokens(deployment, f"{MODEL_ID}:wide") == _reference(
        catalogs, _built(catalogs, "wide"), 12
    )


def test_storage_failure_is_503_with_the_cause(deployment: Deployment) -> None:
    status, body, _ = _post(deployment, f"{MODEL_ID}:{GONE}")
    assert status == 503, body
    assert body["error"]["type"] == "NotFound"
    assert "gone" in body["error"]["message"]


def test_too_long_prompt_is_400_as_vllm_answers_it(deployment: Deployment) -> None:
    status, body, _ = _post(deployment, f"{MODEL_ID}:a0", prompt="fox " * 5000)
    assert status == 400, body
    assert "maximum context length is 4096 tokens" in body["error"]["message"]


def test_batch_metrics_reach_rays_metrics_endpoint(deployment: Deployment) -> None:
    def scrape() -> str:
        with urllib.request.urlopen(deployment.metrics_url, timeout=10) as response:
            text: str = response.read().decode()
        return text if re.search(r"lorafleet_batch_adapters_per_forward_bucket", text) else ""

    text = eventually(scrape, 60, "lorafleet_batch_* metrics")
    assert "lorafleet_batch_forward_passes" in text
