"""Streaming OpenAI clients for load runs (bench/load.py, tests/runtime/test_load.py): many
concurrent ``/v1/completions`` streams, each checked as a client would check it (HTTP 200,
server-sent events that parse, at least one token, ``data: [DONE]`` at the end).

Every outcome is kept: a stream cut short, an error event inside a 200 stream or a refused
request is an error of its own kind; a 429 or 503 that carries ``Retry-After`` is load shed
on purpose and counted apart (``shed``)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

PROMPT = "The quick brown fox"


@dataclass
class StreamResult:
    model: str
    started: float
    ok: bool = False
    error: str | None = None  # kind: http_<status>, cut_short, no_tokens, error_event, ...
    shed: bool = False  # a 429/503 with Retry-After: refused by design, not silently
    retry_after: str | None = None
    status: int | None = None
    ttft_s: float | None = None
    total_s: float | None = None
    tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    detail: str = ""


def completion_body(model: str, max_tokens: int) -> dict[str, Any]:
    """A greedy streamed completion of exactly ``max_tokens`` tokens, with its token ids."""
    return {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "return_token_ids": True,
        "stream_options": {"include_usage": True},
    }


async def stream_completion(
    client: httpx.AsyncClient, url: str, model: str, max_tokens: int
) -> StreamResult:
    """One streamed completion from ``url`` (``.../v1/completions``), checked end to end."""
    result = StreamResult(model=model, started=time.perf_counter())
    usage_tokens: int | None = None
    chunk_tokens = 0
    done = False
    try:
        async with client.stream("POST", url, json=completion_body(model, max_tokens)) as reply:
            result.status = reply.status_code
            if reply.status_code != 200:
                body = (await reply.aread()).decode(errors="replace")
                result.retry_after = reply.headers.get("retry-after")
                result.shed = reply.status_code in (429, 503) and result.retry_after is not None
                result.error = f"http_{reply.status_code}"
                result.detail = body[:300]
                return result
            async for line in reply.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    done = True
                    continue
                if done:
                    result.error, result.detail = "data_after_done", data[:300]
                    return result
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error, result.detail = "error_event", data[:300]
                    return result
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                for choice in chunk.get("choices") or []:
                    ids = choice.get("token_ids") or []
                    text = choice.get("text") or ""
                    if not ids and not text:
                        continue
                    if result.ttft_s is None:
                        result.ttft_s = time.perf_counter() - result.started
                    result.token_ids.extend(ids)
                    result.text += text
                    chunk_tokens += max(1, len(ids))
    except (httpx.HTTPError, json.JSONDecodeError) as err:
        result.error, result.detail = type(err).__name__, str(err)[:300]
        return result
    result.total_s = time.perf_counter() - result.started
    result.tokens = usage_tokens if usage_tokens is not None else chunk_tokens
    if not done:
        result.error = "cut_short"
    elif result.ttft_s is None or result.tokens == 0:
        result.error = "no_tokens"
    elif usage_tokens is not None and len(result.token_ids) not in (0, usage_tokens):
        result.error = "token_count_mismatch"
        result.detail = f"{len(result.token_ids)} streamed, usage says {usage_tokens}"
    else:
        result.ok = True
    return result


async def run_clients(
    url: str,
    models: list[str],
    *,
    duration_s: float,
    max_tokens: int,
    request_timeout_s: float = 300.0,
) -> list[StreamResult]:
    """One client per entry of ``models`` (that client's model), all at once; each sends one
    streamed request after the other until ``duration_s`` has passed (the request in flight
    then finishes). Returns every request's result."""
    limits = httpx.Limits(max_connections=len(models), max_keepalive_connections=len(models))
    timeout = httpx.Timeout(request_timeout_s, connect=30.0)
    deadline = time.perf_counter() + duration_s
    results: list[StreamResult] = []

    async def client_loop(client: httpx.AsyncClient, model: str) -> None:
        while time.perf_counter() < deadline:
            result = await stream_completion(client, url, model, max_tokens)
            results.append(result)
            if result.shed:  # a polite client waits as told before it tries again
                await asyncio.sleep(min(5.0, _seconds(result.retry_after)))

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(client_loop(client, model) for model in models))
    return results


def _seconds(retry_after: str | None) -> float:
    try:
        return max(0.0, float(retry_after or 0))
    except ValueError:
        return 1.0
