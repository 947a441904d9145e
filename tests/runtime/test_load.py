"""Concurrent streaming load on the real runtime (bench/load.py at test size): many clients
streaming at once over several adapters and the base model, as users of one LoRAModel would.
Every stream completes, every model answers, and nobody gets another adapter's answer."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from lorafleet_testbed.streaming import StreamResult, run_clients, stream_completion

from .conftest import MAX_LORAS, MODEL_ID, Deployment

# Two adapters each from S3, GCS and the local folder would be more than MAX_LORAS (2) can
# hold at once, so adapters swap in and out of vLLM's slots while streams are running.
ADAPTERS = ["a0", "a1", "g0", "l0"]
CLIENTS = 24
DURATION_S = 15.0
MAX_TOKENS = 12


def _alone(url: str, model: str) -> StreamResult:
    async def one() -> StreamResult:
        async with httpx.AsyncClient(timeout=120) as client:
            return await stream_completion(client, url, model, MAX_TOKENS)

    return asyncio.run(one())


def test_concurrent_streams_complete_and_each_adapter_keeps_its_own_answer(
    deployment: Deployment,
) -> None:
    assert len(ADAPTERS) > MAX_LORAS
    url = deployment.base_url + "/completions"
    models = [MODEL_ID, *(f"{MODEL_ID}:{name}" for name in ADAPTERS)]
    # Greedy answers, one request at a time: what each model says with nothing else running.
    alone: dict[str, tuple[int, ...]] = {}
    for model in models:
        result = _alone(url, model)
        assert result.ok, result
        alone[model] = tuple(result.token_ids)
        assert len(alone[model]) == MAX_TOKENS, result
    # Otherwise a mix-up could not show.
    assert len(set(alone.values())) == len(models), alone

    clients = [models[i % len(models)] for i in range(CLIENTS)]
    results = asyncio.run(run_clients(url, clients, duration_s=DURATION_S, max_tokens=MAX_TOKENS))

    failed = [r for r in results if not r.ok]
    assert not failed, [(r.model, r.error, r.status, r.detail) for r in failed[:5]]
    answered = Counter(r.model for r in results)
    # Every client finished at least one request, so every model answered several times.
    assert set(answered) == set(models) and min(answered.values()) >= CLIENTS // len(models)
    # A stream that differs from its own model's answer: whose answer it gave instead.
    answered_as = {tokens: model for model, tokens in alone.items()}
    differ = [r for r in results if tuple(r.token_ids) != alone[r.model]]
    wrong = Counter((r.model, answered_as.get(tuple(r.token_ids), "no model")) for r in differ)
    assert not wrong, (
        f"{len(differ)} of {len(results)} streams differ from their model's answer alone "
        f"((asked, answer given as): count): {dict(wrong)}; alone: {alone}; "
        f"examples: {[(r.model, r.token_ids) for r in differ][:8]}"
    )
    assert all(r.tokens == MAX_TOKENS for r in results)


def test_vllm_cpu_lora_ops_leave_base_model_rows_alone() -> None:
    """The mechanism behind the test above, without a server: in a batch mixing base-model
    rows (LoRA index -1) and adapter rows, vLLM's CPU LoRA ops as lorafleet's worker process
    runs them add nothing to the base rows and the usual delta to the others."""
    import torch
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    from lorafleet_runtime.engines.vllm import worker  # applies the fix, as vLLM's import does

    assert worker.LoraSlotsExtension
    torch.manual_seed(0)
    inputs, weights = torch.randn(3, 16), torch.randn(2, 1, 4, 16)
    indices = torch.tensor([0, -1, 1])
    shrunk = torch.zeros(3, 4)
    punica_cpu.bgmv_shrink(inputs, weights, shrunk, indices, 1.0)
    assert torch.count_nonzero(shrunk[1]) == 0
    assert torch.allclose(shrunk[0], weights[0, 0] @ inputs[0])
    assert torch.allclose(shrunk[2], weights[1, 0] @ inputs[2])
    prefill = torch.zeros(3, 4)  # the prefill op goes through the same shrink
    lora_ops.sgmv_shrink(
        inputs, weights, prefill, None, torch.tensor([1, 1, 1]), indices, 3, 1, 3, 1.0
    )
    assert torch.equal(prefill, shrunk)
