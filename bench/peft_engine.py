"""The PEFT engine against naive PEFT serving and against lorafleet on vLLM, side by side in
one run, on the tiny model with 8 adapters. Prints a table and writes JSON to
bench/out/peft_engine.json.

    .venv/bin/python bench/peft_engine.py                     # 96 requests, 64 tokens each
    .venv/bin/python bench/peft_engine.py --max-tokens 16 --no-vllm --rounds 3

Apps:
- naive: what a first PEFT server does: one PeftModel holding the 8 adapters, one request at
  a time (a lock), ``set_adapter`` (or ``disable_adapter`` for the base) per request, plain
  ``PeftModel.generate``. In this process, without HTTP: it pays no serving cost at all,
  which on 2 cores is most of a short request's CPU (the strictest baseline).
- naive-serve: the same code as a plain Ray Serve deployment behind the same HTTP proxy
  (one replica, one CPU, no ingress hop): naive serving, like for like.
- peft: lorafleet's app with ``engine.kind: peft`` (step-level batch, mixed adapters),
  through Serve's HTTP proxy and lorafleet's ingress, as clients use it.
- engine: the same engine (``PeftEngine``) in this process, without Serve: the engine's own
  share of ``peft``'s figures; the rest is the cost of the serving path per request.
- vllm: lorafleet's app on the vLLM CPU engine (``--no-vllm`` leaves it out).
The served apps read the same catalog (8 adapters in MinIO, bench/runtime.py's setup),
``max_loras`` 8, one replica, warmed first (every adapter loaded).

Scenarios: concurrency 16 over the 8 adapters (round-robin), and the base model only. Every
request generates exactly ``--max-tokens`` tokens (greedy, ``ignore_eos``): 64 by default, a
short answer (at 16 most of a served request's time is its trip through Serve, which no
engine changes; bench/runtime.py measures that part). Each round runs the apps one after the
other; throughput is over all rounds, latencies are medians of the rounds' percentiles.
Target (issue 13): peft >= 3x naive throughput at concurrency 16 over 8 adapters. All torch
work runs on one thread (what Ray gives a one-CPU replica), in every app but vllm."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from lorafleet_api.contract import RuntimeArgs
from lorafleet_testbed.tinymodel import build_lora_adapter, build_tiny_model
from runtime import MODEL_ID, combine, ours_app, serving

OUT = Path(__file__).parent / "out"
CACHE = Path.home() / ".cache" / "lorafleet" / "bench-peft"
ADAPTERS = 8
PROMPT = "The quick brown fox"
PEFT_DEPLOYMENT = f"PeftServer:{MODEL_ID}"


def peft_app(base: Path, index_dir: Path) -> Any:
    """lorafleet's Serve app with the PEFT engine, reading bench/runtime.py's catalog."""
    from lorafleet_runtime.app import build_app

    args = RuntimeArgs.model_validate(
        {
            "model_id": MODEL_ID,
            "model_source": f"file://{base}",
            "catalogs": [{"name": "bench", "namespace": "default"}],
            "engine": {
                "kind": "peft",
                "max_loras": ADAPTERS,
                "max_lora_rank": 8,
                "dtype": "float32",
            },
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "use_gpu": False,
            "catalog_index_dir": str(index_dir),
        }
    )
    return build_app(args.to_serve_args())


class NaivePeft:
    """One PeftModel, one request at a time, ``set_adapter`` per request."""

    def __init__(self, base: Path, folders: dict[str, Path], threads: int) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        for name, folder in folders.items():
            if isinstance(model, PeftModel):
                model.load_adapter(folder, adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, folder, adapter_name=name)
        self.model = model.eval()
        self.lock = threading.Lock()

    def request(self, model_id: str, max_tokens: int) -> tuple[int, float, int]:
        import contextlib

        import torch
        from transformers import GenerationConfig

        started = time.perf_counter()
        config = GenerationConfig(
            max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        with self.lock, torch.inference_mode():
            adapter = model_id.partition(":")[2]
            if adapter:
                self.model.set_adapter(adapter)
                context: Any = contextlib.nullcontext()
            else:
                context = self.model.disable_adapter()
            inputs = self.tokenizer(PROMPT, return_tensors="pt")
            with context:
                out = self.model.generate(**inputs, generation_config=config)
        generated = out.shape[1] - inputs["input_ids"].shape[1]
        return 200, time.perf_counter() - started, int(generated)


class InProcessEngine:
    """``PeftEngine`` with the 8 adapters, driven from an event loop of its own."""

    def __init__(self, base: Path, folders: dict[str, Path]) -> None:
        import asyncio

        from lorafleet_runtime.engines.peft.engine import PeftEngine

        self.engine = PeftEngine.from_pretrained(base, dtype="float32", max_loras=len(folders))
        self.engine.start()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        for name, folder in folders.items():
            self._wait(self.engine.load_adapter(f"{MODEL_ID}:{name}", folder))
        self.prompt = self.engine.encode(PROMPT)

    def _wait(self, coroutine: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def request(self, model_id: str, max_tokens: int) -> tuple[int, float, int]:
        from lorafleet_runtime.engines.peft.sampling import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        adapter = model_id if ":" in model_id else None
        started = time.perf_counter()
        done = self._wait(self.engine.complete(self.prompt, adapter, params))
        return 200, time.perf_counter() - started, len(done.token_ids)

    def close(self) -> None:
        self.engine.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)


def naive_app(base: Path, folders: dict[str, Path], threads: int) -> Any:
    """``NaivePeft`` as a plain Ray Serve deployment answering /v1/completions."""
    import asyncio

    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=1000)
    class NaivePeftServer:
        def __init__(self) -> None:
            self.naive = NaivePeft(base, folders, threads)

        async def __call__(self, request: Any) -> dict[str, Any]:
            body = await request.json()
            _, _, tokens = await asyncio.to_thread(
                self.naive.request, body["model"], body["max_tokens"]
            )
            return {"usage": {"completion_tokens": tokens}}

    return NaivePeftServer.bind()


def http_request(url: str, model: str, max_tokens: int) -> tuple[int, float, int]:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=300) as response:
            answer = json.loads(response.read())
            status = response.status
            tokens = int(answer["usage"]["completion_tokens"])
    except urllib.error.HTTPError as err:
        status, tokens = err.code, 0
    return status, time.perf_counter() - started, tokens


def run(
    call: Callable[[str, int], tuple[int, float, int]],
    models: list[str],
    concurrency: int,
    max_tokens: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda m: call(m, max_tokens), models))
    wall = time.perf_counter() - started
    latencies = sorted(latency for _, latency, _ in results)
    tokens = sum(t for status, _, t in results if status == 200)
    return {
        "requests": len(results),
        "errors": sum(1 for status, _, _ in results if status != 200),
        "tokens": tokens,
        "seconds": round(wall, 3),
        "rps": round(len(results) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[max(0, int(len(latencies) * 0.95) - 1)] * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--no-vllm", dest="vllm", action="store_false", help="leave lorafleet on vLLM out"
    )
    options = parser.parse_args()

    from ray import serve

    base = build_tiny_model(CACHE / "base")
    folders = {f"w{i}": build_lora_adapter(base, CACHE / f"w{i}", seed=i) for i in range(ADAPTERS)}
    adapters = [f"{MODEL_ID}:{name}" for name in folders]
    n = options.requests
    scenarios = {
        f"{ADAPTERS} adapters": [adapters[i % ADAPTERS] for i in range(n)],
        "base": [MODEL_ID] * n,
    }
    index_dir = CACHE / "index"
    with serving(folders, index_dir) as (_, port):
        deploy: dict[str, float] = {}
        makers: dict[str, Callable[[], Any]] = {"peft": lambda: peft_app(base, index_dir)}
        if options.vllm:
            makers["vllm"] = lambda: ours_app(base, index_dir, max_loras=ADAPTERS)
        for name, make in makers.items():
            started = time.perf_counter()
            serve.run(make(), name=name, route_prefix=f"/{name}")
            deploy[name] = round(time.perf_counter() - started, 1)
        peft_server = serve.get_deployment_handle(PEFT_DEPLOYMENT, app_name="peft")

        def stats() -> dict[str, Any]:
            answer: dict[str, Any] = peft_server.peft_stats.remote().result()
            return answer

        threads = int(stats()["torch_threads"])
        naive = NaivePeft(base, folders, threads)
        engine = InProcessEngine(base, folders)
        serve.run(naive_app(base, folders, threads), name="naive", route_prefix="/naive")
        calls: dict[str, Callable[[str, int], tuple[int, float, int]]] = {
            "naive": naive.request,
            "naive-serve": lambda model, tokens: http_request(
                f"http://127.0.0.1:{port}/naive", model, tokens
            ),
        }
        for name in makers:
            url = f"http://127.0.0.1:{port}/{name}"
            calls[name] = lambda model, tokens, url=url: http_request(url, model, tokens)
            if name == "peft":
                calls["engine"] = engine.request
        for call in calls.values():  # warm-up: every adapter loaded, every path compiled
            run(call, [MODEL_ID, *adapters], 1, options.max_tokens)
        results: dict[str, dict[str, Any]] = {}
        batching: dict[str, dict[str, Any]] = {}
        for scenario, models in scenarios.items():
            runs: dict[str, list[dict[str, Any]]] = {app: [] for app in calls}
            before = stats()
            for _ in range(options.rounds):
                for app, call in calls.items():
                    runs[app].append(run(call, models, options.concurrency, options.max_tokens))
            after = stats()
            results[scenario] = {app: combine(r) for app, r in runs.items()}
            for app in calls:
                results[scenario][app]["tokens_per_s"] = round(
                    sum(r["tokens"] for r in runs[app]) / results[scenario][app]["seconds"], 1
                )
            for mine, theirs in (
                ("peft", "naive"),
                ("peft", "naive-serve"),
                ("engine", "naive"),
            ):
                results[scenario][f"{mine}_vs_{theirs}"] = round(
                    results[scenario][mine]["rps"] / results[scenario][theirs]["rps"], 2
                )
            passes = after["forward_passes"] - before["forward_passes"]
            mixed = {
                k: v - before["adapters_per_forward"].get(k, 0)
                for k, v in after["adapters_per_forward"].items()
                if v - before["adapters_per_forward"].get(k, 0)
            }
            batching[scenario] = {
                "forward_passes": passes,
                "decode_steps": after["decode_steps"] - before["decode_steps"],
                "rows_per_forward": round(
                    options.rounds * n * options.max_tokens / max(1, passes), 2
                ),
                "adapters_per_forward": mixed,
            }
        engine.close()

    header = (
        f"{'scenario':<12} {'app':<11} {'req/s':>7} {'tok/s':>8} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for scenario, by_app in results.items():
        for app in calls:
            r = by_app[app]
            print(
                f"{scenario:<12} {app:<11} {r['rps']:>7.2f} {r['tokens_per_s']:>8.1f} "
                f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['errors']:>6}"
            )
        b = batching[scenario]
        print(
            f"{'':<12} throughput: peft/naive {by_app['peft_vs_naive']:.2f}x, "
            f"peft/naive-serve {by_app['peft_vs_naive-serve']:.2f}x, "
            f"engine/naive {by_app['engine_vs_naive']:.2f}x"
        )
        print(
            f"{'':<12} peft: {b['rows_per_forward']} rows per forward pass; forward passes by "
            f"distinct adapters: {b['adapters_per_forward']}"
        )
    print(f"deploy seconds: {deploy}; torch threads (naive and the peft replica): {threads}")
    OUT.mkdir(exist_ok=True)
    report = {
        "options": vars(options),
        "deploy_seconds": deploy,
        "torch_threads": threads,
        "results": results,
        "peft_batching": batching,
    }
    (OUT / "peft_engine.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
