"""Load: many concurrent streaming clients against lorafleet's Serve app (vLLM CPU engine, tiny
model, adapters in a real MinIO catalog), for a bounded time. Prints a table and writes JSON
to bench/out/load.json; exits 1 if any request failed.

    .venv/bin/python bench/load.py          # 200 clients, 16 adapters, 60 s, 16 tokens each
    .venv/bin/python bench/load.py --clients 50 --adapters 4 --duration 20

Client i streams ``models[i % len(models)]`` (the base model, then the adapters) one request
after the other until ``--duration`` has passed. Every stream must be HTTP 200, carry at least
one token and end with ``data: [DONE]``; anything else is an error of its own kind. A 429/503
with ``Retry-After`` is load shed on purpose and reported apart. Peak memory: the RSS of the
Serve proxy and of every Serve replica (with the processes they started, such as vLLM's
engine core), summed per sample every 0.5 s, the largest sum reported (RSS counts shared pages
once per process, so the sum is an upper bound)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from lorafleet_testbed.streaming import StreamResult, run_clients
from lorafleet_testbed.tinymodel import build_lora_adapter, build_tiny_model
from runtime import MODEL_ID, ours_app, run_scenario, serving

OUT = Path(__file__).parent / "out"
CACHE = Path.home() / ".cache" / "lorafleet" / "bench-load"
APP = "load"
ROLES = ("ray::ProxyActor", "ray::ServeReplica")


class MemorySampler:
    """Samples, every ``period_s``, the RSS of this Ray node's Serve proxy and replicas (and
    their children) in a thread; keeps the peak sum and its parts."""

    def __init__(self, period_s: float = 0.5) -> None:
        import ray

        # The local node's raylet: every worker of this Ray instance (and no other on the
        # machine) descends from it.
        node = ray._private.worker._global_node
        (raylet,) = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET]
        self._raylet = psutil.Process(raylet.process.pid)
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples = 0
        self.peak_bytes = 0
        self.peak_parts: dict[str, int] = {}

    def sample(self) -> dict[str, int]:
        parts: Counter[str] = Counter()
        for proc in self._raylet.children(recursive=True):
            try:
                title = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if not title.startswith(ROLES):
                continue
            # "ray::ServeReplica:<app>:<deployment>.<method running now>"
            name = title.split()[0].removeprefix("ray::").split(".")[0]
            for member in [proc, *_children(proc)]:
                try:
                    parts[name] += member.memory_info().rss
                except psutil.Error:
                    continue
        return dict(parts)

    def _run(self) -> None:
        while not self._stop.is_set():
            parts = self.sample()
            self.samples += 1
            total = sum(parts.values())
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_parts = total, parts
            self._stop.wait(self._period_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summarise(results: list[StreamResult], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    shed = [r for r in results if r.shed]
    errors = Counter(r.error for r in results if r.error and not r.shed)
    tokens = sum(r.tokens for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    total = [r.total_s for r in ok if r.total_s is not None]

    def ms(values: list[float], q: float) -> float | None:
        p = percentile(values, q)
        return None if p is None else round(p * 1000, 1)

    per_model = Counter(r.model for r in ok)
    by_model = {
        model: {
            "completed": count,
            "total_ms_p95": ms([r.total_s for r in ok if r.model == model and r.total_s], 0.95),
        }
        for model, count in sorted(per_model.items())
    }
    return {
        "requests": len(results),
        "completed": len(ok),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "error_samples": [
            {"model": r.model, "kind": r.error, "status": r.status, "detail": r.detail}
            for r in results
            if r.error and not r.shed
        ][:10],
        "shed": len(shed),
        "shed_by_status": dict(Counter(str(r.status) for r in shed)),
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(len(ok) / wall_s, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall_s, 1),
        "ttft_ms": {"p50": ms(ttft, 0.5), "p95": ms(ttft, 0.95), "p99": ms(ttft, 0.99)},
        "total_ms": {"p50": ms(total, 0.5), "p95": ms(total, 0.95), "p99": ms(total, 0.99)},
        "completed_per_model": {
            "min": min(per_model.values(), default=0),
            "max": max(per_model.values(), default=0),
            "mean": round(statistics.fmean(per_model.values()), 1) if per_model else 0,
            "models_answered": len(per_model),
        },
        "by_model": by_model,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-loras", type=int, default=8, help="adapter slots in vLLM")
    parser.add_argument("--json", type=Path, default=OUT / "load.json")
    options = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

    from ray import serve

    base = build_tiny_model(CACHE / "base")
    adapters = [f"l{i}" for i in range(options.adapters)]
    folders = {
        name: build_lora_adapter(base, CACHE / name, seed=i) for i, name in enumerate(adapters)
    }
    models = [MODEL_ID, *(f"{MODEL_ID}:{name}" for name in adapters)]
    clients = [models[i % len(models)] for i in range(options.clients)]
    with serving(folders, CACHE / "index") as (_minio, port):
        started = time.perf_counter()
        serve.run(
            ours_app(base, CACHE / "index", max_loras=options.max_loras),
            name=APP,
            route_prefix=f"/{APP}",
        )
        deploy_s = round(time.perf_counter() - started, 1)
        url = f"http://127.0.0.1:{port}/{APP}"
        warm = run_scenario(url, models, 1, options.max_tokens)  # engine paths, every adapter once
        if warm["errors"]:
            print(f"warm-up failed: {warm}", file=sys.stderr)
            return 1
        with MemorySampler() as memory:
            idle = sum(memory.sample().values())
            started = time.perf_counter()
            results = asyncio.run(
                run_clients(
                    url + "/v1/completions",
                    clients,
                    duration_s=options.duration,
                    max_tokens=options.max_tokens,
                )
            )
            wall_s = time.perf_counter() - started
        summary = summarise(results, wall_s)
        summary["memory"] = {
            "idle_mb": round(idle / 2**20),
            "peak_mb": round(memory.peak_bytes / 2**20),
            "peak_parts_mb": {k: round(v / 2**20) for k, v in sorted(memory.peak_parts.items())},
            "samples": memory.samples,
        }
        summary["deploy_s"] = deploy_s

    print(
        f"{options.clients} streaming clients, {options.adapters} adapters + base, "
        f"{options.duration:g} s, {options.max_tokens} tokens each, max_loras {options.max_loras}"
    )
    rows = [
        ("requests completed", f"{summary['completed']} of {summary['requests']}"),
        ("errors", f"{summary['errors']} {summary['errors_by_kind'] or ''}".strip()),
        (
            "shed (429/503 + Retry-After)",
            f"{summary['shed']} {summary['shed_by_status'] or ''}".strip(),
        ),
        ("wall (last stream included)", f"{summary['wall_s']} s"),
        ("requests/s", summary["requests_per_s"]),
        ("tokens/s", summary["tokens_per_s"]),
        (
            "TTFT p50 / p95 / p99 ms",
            " / ".join(str(summary["ttft_ms"][q]) for q in ("p50", "p95", "p99")),
        ),
        (
            "total p50 / p95 / p99 ms",
            " / ".join(str(summary["total_ms"][q]) for q in ("p50", "p95", "p99")),
        ),
        (
            "completed per model min/mean/max",
            "{min} / {mean} / {max}".format(**summary["completed_per_model"]),
        ),
        (
            "memory idle -> peak (MB, RSS sum)",
            f"{summary['memory']['idle_mb']} -> {summary['memory']['peak_mb']}",
        ),
        ("peak by process (MB)", summary["memory"]["peak_parts_mb"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for sample in summary["error_samples"]:
        print(f"error: {sample}", file=sys.stderr)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"options": {k: str(v) for k, v in vars(options).items()}, "results": summary}
    options.json.write_text(json.dumps(report, indent=2))
    return 1 if summary["errors"] or not summary["completed"] else 0


if __name__ == "__main__":
    sys.exit(main())
