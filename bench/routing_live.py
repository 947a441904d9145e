"""Live A/B of request routers on the real runtime: lorafleet's Serve app on the vLLM CPU engine
(tiny model), 2 replicas, ``max_loras`` well below the adapter count, a seeded Zipf stream of
adapter requests. The same app is deployed twice in one Ray instance, one after the other,
with ``router.policy: ray`` (Ray Serve's own router) and ``router.policy: lorafleet``, and gets
the identical request stream. Prints a table and writes JSON (bench/out/routing_live.json).

    .venv/bin/python bench/routing_live.py          # 2 replicas x 4 slots, 24 adapters, 600 req
    .venv/bin/python bench/routing_live.py --adapters 12 --max-loras 2 \
        --policies ray lorafleet affinity

Adapter loads are counted by the engine: every replica reports how many adapters it has
registered in vLLM since it started (``engine_loads`` in its routing stats), read from each
replica actor after the run. Targets (issue 10): lorafleet <= 0.6 x ray's loads, p95 no
worse, zero errors."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from lorafleet_testbed import process
from lorafleet_testbed.tinymodel import build_lora_adapter, build_tiny_model
from runtime import ours_app, run_scenario, serving

OUT = Path(__file__).parent / "out"
CACHE = Path.home() / ".cache" / "lorafleet" / "bench-routing-live"
MODEL_ID = "tiny"


def zipf_stream(adapters: list[str], n: int, s: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    ranked = adapters[:]
    rng.shuffle(ranked)
    weights = [1 / (k + 1) ** s for k in range(len(ranked))]
    return rng.choices(ranked, weights=weights, k=n)


def engine_loads(app: str) -> int:
    """Adapters registered in vLLM, summed over the app's LLM replicas (each replica's own
    count, from its routing stats)."""
    import ray

    total = 0
    prefix = f"SERVE_REPLICA::{app}#LoraFleetServer"
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if actor["namespace"] == "serve" and name.startswith(prefix):
            handle = ray.get_actor(name, namespace="serve")
            stats = ray.get(handle.record_routing_stats.remote(), timeout=60)
            total += int(stats["lorafleet"]["engine_loads"])
    return total


def router_decisions(metrics_url: str, policy: str) -> dict[str, float]:
    """lorafleet's router counters for ``policy`` by tier/reason (Ray exports them every few
    seconds: read after a pause)."""
    import re
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("ray_lorafleet_router_decisions_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("policy") != policy:
            continue
        key = f"{labels['tier']}/{labels['reason']}"
        counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--adapters", type=int, default=24)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--max-loras", type=int, default=4)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--policies", nargs="+", default=["ray", "lorafleet"])
    parser.add_argument("--json", type=Path, default=OUT / "routing_live.json")
    options = parser.parse_args()

    from ray import serve

    base = build_tiny_model(CACHE / "base")
    names = [f"z{i}" for i in range(options.adapters)]
    folders = {name: build_lora_adapter(base, CACHE / name, seed=i) for i, name in enumerate(names)}
    stream = [
        f"{MODEL_ID}:{name}"
        for name in zipf_stream(names, options.requests, options.zipf, options.seed)
    ]
    results: dict[str, dict[str, Any]] = {}
    index_dir = CACHE / "index"
    metrics_port = process.free_port()
    with serving(folders, index_dir, metrics_port) as (_, port):
        for policy in options.policies:
            app = f"live-{policy}"
            serve.run(
                ours_app(
                    base,
                    index_dir,
                    replicas=options.replicas,
                    max_loras=options.max_loras,
                    router={"policy": policy},
                ),
                name=app,
                route_prefix=f"/{app}",
            )
            url = f"http://127.0.0.1:{port}/{app}"
            run_scenario(url, [MODEL_ID], 1, options.max_tokens)  # engine warm, no adapter
            before = engine_loads(app)
            result = run_scenario(url, stream, options.concurrency, options.max_tokens)
            result["engine_loads"] = engine_loads(app) - before
            if policy != "ray":
                time.sleep(15)  # Ray's metrics export period
                result["decisions"] = router_decisions(
                    f"http://127.0.0.1:{metrics_port}/metrics", policy
                )
            results[policy] = result
            serve.delete(app)

    header = f"{'policy':<10} {'loads':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'errors':>6}"
    print(header)
    print("-" * len(header))
    for policy, r in results.items():
        print(
            f"{policy:<10} {r['engine_loads']:>6} {r['rps']:>7.2f} {r['p50_ms']:>8.1f} "
            f"{r['p95_ms']:>8.1f} {r['errors']:>6}"
        )
    for policy, r in results.items():
        if r.get("decisions"):
            shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["decisions"].items()))
            print(f"{policy} decisions (tier/reason): {shown}")
    if "ray" in results and "lorafleet" in results and results["ray"]["engine_loads"]:
        ratio = results["lorafleet"]["engine_loads"] / results["ray"]["engine_loads"]
        p95 = results["lorafleet"]["p95_ms"] / results["ray"]["p95_ms"]
        print(f"lorafleet / ray: engine loads {ratio:.2f}x, p95 {p95:.2f}x")
    options.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"options": {k: str(v) for k, v in vars(options).items()}, "results": results}
    options.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
