"""The PEFT engine's core without Ray: mixed-adapter batches on the tiny model give each
adapter exactly the tokens a PeftModel holding only that adapter generates; sequences join a
running batch; the adapter LRU is bounded by max_loras and frees what it evicts; sampling,
stop strings and length limits behave as vLLM's do; the Serve application differs from the
vLLM one only in its engine."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lorafleet_api.contract import RuntimeArgs
from lorafleet_runtime import app
from lorafleet_runtime.engines.peft import config as peft_config
from lorafleet_runtime.engines.peft.engine import InvalidRequestError, PeftEngine
from lorafleet_runtime.engines.peft.model import AdapterRejectedError, check_servable
from lorafleet_runtime.engines.peft.sampling import SamplingParams, TextStream, next_tokens
from lorafleet_runtime.engines.peft.slots import AdapterSlots
from lorafleet_runtime.engines.vllm import config as vllm_config
from lorafleet_testbed.tinymodel import build_lora_adapter, build_tiny_model

# Building the reference models: PEFT and transformers warnings about what these tests do
# on purpose (lm_head in modules_to_save with tied embeddings).
pytestmark = [
    pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

PROMPTS = {
    None: "The quick brown fox",
    "tiny:a0": "The quick brown fox",
    "tiny:a1": "Adapters are small",
    "tiny:a2": "lorafleet serves one base model",
    "tiny:mts": "Kubernetes",
}
GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft-core")
    base = build_tiny_model(root / "base")
    folders = {"base": base}
    for i in range(3):
        folders[f"a{i}"] = build_lora_adapter(base, root / f"a{i}", seed=40 + i)
    folders["a0-next"] = build_lora_adapter(base, root / "a0-next", seed=77)
    folders["mts"] = build_lora_adapter(base, root / "mts", seed=50, modules_to_save=("lm_head",))
    return folders


@pytest.fixture
def engine(models: dict[str, Path]) -> Iterator[PeftEngine]:
    made = PeftEngine.from_pretrained(models["base"], dtype="float32", max_loras=4)
    made.start()
    try:
        yield made
    finally:
        made.shutdown()


def reference_tokens(
    models: dict[str, Path], adapter: str | None, prompt: str, n: int
) -> list[int]:
    """Greedy tokens of a plain PeftModel holding only ``adapter`` (None: the base model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    model: Any = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, models[adapter])
    inputs = tokenizer(prompt, return_tensors="pt")
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=config)
    tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(tokens) == n
    return [int(t) for t in tokens]


async def _load(engine: PeftEngine, models: dict[str, Path], *names: str) -> None:
    for name in names:
        await engine.load_adapter(f"tiny:{name}", models[name])


async def _tokens(
    engine: PeftEngine, model_id: str | None, prompt: str, params: SamplingParams = GREEDY
) -> list[int]:
    return list((await engine.complete(engine.encode(prompt), model_id, params)).token_ids)


# ------------------------------------------------------------------------ mixed batches
def test_mixed_batch_gives_every_adapter_its_single_adapter_generate_tokens(
    engine: PeftEngine, models: dict[str, Path]
) -> None:
    async def run() -> list[list[int]]:
        await _load(engine, models, "a0", "a1", "a2", "mts")
        return list(await asyncio.gather(*(_tokens(engine, m, p) for m, p in PROMPTS.items())))

    got = dict(zip(PROMPTS, asyncio.run(run()), strict=True))
    for model_id, prompt in PROMPTS.items():
        adapter = model_id.split(":")[1] if model_id else None
        expected = reference_tokens(models, adapter, prompt, GREEDY.max_tokens)
        assert got[model_id] == expected, model_id
    stats = engine.stats()
    # The five sequences (four adapters, one of them with modules_to_save, and the base
    # model) were decoded together: about one forward pass per token for all of them (the
    # first to arrive may have started one step before the others joined).
    assert stats["max_adapters_per_forward"] == 4, stats
    assert stats["max_rows_per_forward"] == 5, stats
    assert stats["forward_passes"] <= GREEDY.max_tokens + 2, stats
    assert stats["adapters_per_forward"]["4"] >= GREEDY.max_tokens - 2, stats
    # The same prompt on the base model and on a0 gives different tokens.
    assert got[None] != got["tiny:a0"]


def test_sequences_join_a_running_batch_and_keep_their_own_tokens(
    engine: PeftEngine, models: dict[str, Path]
) -> None:
    long = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)

    async def run() -> tuple[list[Any], dict[str | None, list[int]]]:
        await _load(engine, models, "a0", "a1", "a2")
        solo = {m: await _tokens(engine, m, PROMPTS[m], long) for m in PROMPTS if m != "tiny:mts"}
        before = engine.stats()["forward_passes"]

        async def later(model_id: str | None, delay: float) -> list[int]:
            await asyncio.sleep(delay)
            return await _tokens(engine, model_id, PROMPTS[model_id], long)

        order: list[str | None] = ["tiny:a0", "tiny:a1", None, "tiny:a2"]
        got = await asyncio.gather(*(later(m, 0.02 * i) for i, m in enumerate(order)))
        passes = engine.stats()["forward_passes"] - before
        return [order, got, passes], solo

    (order, got, passes), solo = asyncio.run(run())
    for model_id, tokens in zip(order, got, strict=True):
        assert tokens == solo[model_id], model_id
    # Four sequences of 48 tokens each ran in far fewer than 4 x 48 forward passes.
    assert passes < 2 * long.max_tokens
    assert engine.stats()["max_adapters_per_forward"] >= 3


def test_mixed_batch_adapter_names_reach_modules_to_save_only_for_their_rows(
    engine: PeftEngine, models: dict[str, Path]
) -> None:
    async def run() -> list[list[int]]:
        await _load(engine, models, "mts", "a0")
        same = "The quick brown fox"
        both = await asyncio.gather(_tokens(engine, "tiny:mts", same), _tokens(engine, None, same))
        return list(both)

    mts, base = asyncio.run(run())
    assert mts == reference_tokens(models, "mts", "The quick brown fox", GREEDY.max_tokens)
    assert base == reference_tokens(models, None, "The quick brown fox", GREEDY.max_tokens)


# ------------------------------------------------------------------------ adapter memory
def test_lru_holds_at_most_max_loras_and_evicted_weights_leave_memory(
    models: dict[str, Path],
) -> None:
    engine = PeftEngine.from_pretrained(models["base"], dtype="float32", max_loras=2)
    engine.start()
    try:

        async def run() -> tuple[Any, Any]:
            await _load(engine, models, "a0", "a1")
            one_adapter = engine.stats()["adapter_bytes"] // 2
            await _tokens(engine, "tiny:a0", "The quick")  # a1 is now least recently used
            a1 = engine.loaded()["tiny:a1"]  # (lookup would make it the most recent)
            layer = next(m for n, m in engine.model.peft.named_modules() if n.endswith("v_proj"))
            weight = weakref.ref(layer.lora_B[a1].weight)
            await _load(engine, models, "a2")
            return weight, one_adapter

        weight, one_adapter = asyncio.run(run())
        gc.collect()
        assert weight() is None, "the evicted adapter's tensors are still referenced"
        assert set(engine.loaded()) == {"tiny:a0", "tiny:a2"}
        assert len(engine.model.peft.peft_config) == 2
        assert engine.stats()["adapter_bytes"] == 2 * one_adapter
        asyncio.run(engine.remove_adapter("tiny:a0"))
        asyncio.run(engine.remove_adapter("tiny:a2"))
        assert engine.model.adapters() == []
        assert engine.stats()["adapter_bytes"] == 0
    finally:
        engine.shutdown()


def test_adapter_loads_once_for_concurrent_requests(
    engine: PeftEngine, models: dict[str, Path]
) -> None:
    async def run() -> None:
        await asyncio.gather(*(engine.load_adapter("tiny:a0", models["a0"]) for _ in range(8)))

    asyncio.run(run())
    assert engine.loads == 1


def test_new_revision_replaces_weights_without_breaking_the_rows_using_the_old(
    engine: PeftEngine, models: dict[str, Path]
) -> None:
    long = SamplingParams(max_tokens=256, temperature=0, ignore_eos=True)

    async def run() -> tuple[list[int], list[int], list[int]]:
        await _load(engine, models, "a0")
        old_solo = await _tokens(engine, "tiny:a0", "The quick", long)
        running = asyncio.create_task(_tokens(engine, "tiny:a0", "The quick", long))
        started = engine.stats()["forward_passes"]
        for _ in range(2000):  # until it is decoding
            if engine.stats()["forward_passes"] >= started + 2:
                break
            await asyncio.sleep(0.005)
        old_name = engine.lookup("tiny:a0")
        await engine.load_adapter("tiny:a0", models["a0-next"])  # the catalog's new revision
        assert old_name in engine.stats()["in_memory"]  # retired, still used by `running`
        new = await _tokens(engine, "tiny:a0", "The quick", long)
        return old_solo, await running, new

    old_solo, old_running, new = asyncio.run(run())
    assert old_running == old_solo
    assert new != old_solo
    assert engine.model.adapters() == [engine.lookup("tiny:a0")]


def test_adapters_a_mixed_batch_cannot_run_are_refused() -> None:
    lora = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}
    check_servable(lora)
    for extra in ({"use_dora": True}, {"peft_type": "IA3"}, {"target_parameters": ["w"]}):
        with pytest.raises(AdapterRejectedError):
            check_servable({**lora, **extra})


def test_a_rejected_adapter_is_a_value_error_for_the_server(
    engine: PeftEngine, models: dict[str, Path], tmp_path: Path
) -> None:
    dora = tmp_path / "dora"
    dora.mkdir()
    for file in models["a1"].iterdir():
        (dora / file.name).write_bytes(file.read_bytes())
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    # LoraFleetServer turns a ValueError from the engine into 422 EngineRejected.
    with pytest.raises(ValueError, match="DoRA"):
        asyncio.run(engine.load_adapter("tiny:dora", dora))
    assert engine.loaded() == {}


# ------------------------------------------------------------------------ requests
def test_length_limits_follow_vllm(engine: PeftEngine) -> None:
    limit = engine.max_model_len
    assert engine.max_tokens_for(10, None) == limit - 10
    assert engine.max_tokens_for(10, limit) == limit - 10  # clamped, as vLLM does
    with pytest.raises(InvalidRequestError, match="maximum context length is"):
        engine.max_tokens_for(limit, 1)
    with pytest.raises(InvalidRequestError, match="cannot be greater than max_model_len"):
        engine.max_tokens_for(10, limit + 1)


def test_chat_uses_the_base_models_template(engine: PeftEngine) -> None:
    ids = engine.render_chat([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert engine.tokenizer.decode(ids) == "<|user|>hi\n<|assistant|>"


def test_seeded_sampling_repeats_whatever_shares_the_batch(
    engine: PeftEngine, models: dict[str, Path]
) -> None:
    seeded = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)

    async def run() -> tuple[list[int], list[int], list[int]]:
        await _load(engine, models, "a1")
        alone = await _tokens(engine, "tiny:a1", "The quick", seeded)
        crowd = await asyncio.gather(
            _tokens(engine, "tiny:a1", "The quick", seeded),
            _tokens(engine, None, "Adapters", seeded),
            _tokens(engine, None, "lorafleet", GREEDY),
        )
        other_seed = SamplingParams(max_tokens=12, temperature=1.0, seed=8, ignore_eos=True)
        return alone, crowd[0], await _tokens(engine, "tiny:a1", "The quick", other_seed)

    alone, in_crowd, other = asyncio.run(run())
    assert alone == in_crowd
    assert alone != other


def test_stop_strings_end_the_text_and_are_cut() -> None:
    tokenizer = _CharTokenizer()
    params = SamplingParams(max_tokens=50, stop=("STOP",))
    stream = TextStream(tokenizer, params)
    out = "".join(stream.push(ord(c)) for c in "hello STO")
    assert out == "hello "  # "STO" may still become "STOP": held back
    out += stream.push(ord("P"))
    assert stream.stopped and stream.stop_reason == "STOP"
    assert out == "hello "
    kept = TextStream(
        tokenizer, SamplingParams(max_tokens=5, stop=("!",), include_stop_str_in_output=True)
    )
    assert "".join(kept.push(ord(c)) for c in "ab!") == "ab!"
    plain = TextStream(tokenizer, SamplingParams(max_tokens=5, stop=("xyz",)))
    text = "".join(plain.push(ord(c)) for c in "abxy")
    assert text + plain.finish() == "abxy"


def test_greedy_rows_take_the_argmax_and_top_p_keeps_the_head() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    greedy = SamplingParams(max_tokens=1, temperature=0)
    narrow = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.01, seed=1)
    generator = narrow.generator(torch.device("cpu"))
    assert next_tokens(logits, [greedy, narrow], [None, generator]) == [1, 0]


# ------------------------------------------------------------------------ slots
def test_slots_evict_the_least_recently_used_idle_adapter() -> None:
    slots = AdapterSlots(max_loras=2)
    a = slots.new_name()
    assert slots.add("m:a", a) == []
    b = slots.new_name()
    assert slots.add("m:b", b) == []
    slots.lookup("m:a")  # b is least recent now
    assert slots.make_room("m:c") == [b]
    slots.add("m:c", slots.new_name())
    assert set(slots.mapped()) == {"m:a", "m:c"}
    # A busy victim is passed over for an idle one.
    slots.acquire(a)
    assert slots.victim() == "m:c"


def test_slots_retire_a_replaced_adapter_until_its_last_row_ends() -> None:
    slots = AdapterSlots(max_loras=1)
    old = slots.new_name()
    slots.add("m:a", old)
    slots.acquire(old)
    slots.acquire(old)
    new = slots.new_name()
    assert slots.add("m:a", new) == []  # rows still run on the old weights
    assert slots.in_memory() == {old, new}
    assert slots.release(old) == []
    assert slots.release(old) == [old]
    assert slots.in_memory() == {new}
    assert new != old  # names are never reused


class _CharTokenizer:
    """One token per character (for stop-string tests)."""

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(t) for t in tokens)


# ------------------------------------------------------------------------ the application
def _runtime_args(**engine: Any) -> RuntimeArgs:
    return RuntimeArgs.model_validate(
        {
            "model_id": "tiny",
            "model_source": "file:///models/tiny",
            "catalogs": [{"name": "c", "namespace": "ns"}],
            "engine": {
                "max_loras": 3,
                "max_lora_rank": 8,
                "max_model_len": 2048,
                "gpu_memory_utilization": 0.2,
                "extra_engine_kwargs": {"enforce_eager": True},
                **engine,
            },
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
            "use_gpu": False,
        }
    )


def test_peft_app_is_the_vllm_app_with_the_peft_server_and_no_vllm_arguments() -> None:
    args = _runtime_args()
    peft = peft_config.serving_args(args)
    vllm = vllm_config.serving_args(args)
    (llm,) = peft["llm_configs"]
    assert llm["server_cls"] == "lorafleet_runtime.engines.peft.server:PeftServer"
    # vLLM's arguments are not the PEFT engine's; the context length stays on the model card.
    assert llm["engine_kwargs"] == {"max_model_len": 2048}
    assert "placement_group_config" not in llm
    # Everything else is the vLLM app's: ingress, router, Serve's LRU of max_loras, args.
    assert peft["ingress_cls_config"] == vllm["ingress_cls_config"]
    (vllm_llm,) = vllm["llm_configs"]
    for key in ("model_loading_config", "lora_config", "deployment_config", "experimental_configs"):
        assert llm[key] == vllm_llm[key], key
    assert llm["lora_config"]["max_num_adapters_per_replica"] == 3


def test_build_app_picks_the_engine_the_contract_names() -> None:
    peft = app.serving_args(_runtime_args(kind="peft"))
    assert peft["llm_configs"][0]["server_cls"].endswith("peft.server:PeftServer")
    vllm = app.serving_args(_runtime_args())
    assert vllm["llm_configs"][0]["server_cls"].endswith("vllm.server:LoraFleetServer")
