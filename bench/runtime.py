"""Runtime overhead: lorafleet's Serve app against plain Ray Serve LLM (``build_openai_app``
with ``dynamic_lora_loading_path``), same vLLM CPU engine, same tiny model, same adapters in
the same S3-compatible server, both deployed side by side in one Ray instance and measured
alternately. Prints a table and writes JSON to bench/out/runtime.json.

    .venv/bin/python bench/runtime.py                   # defaults: 96 requests per scenario
    .venv/bin/python bench/runtime.py --requests 200 --concurrency 8 --rounds 5

Scenarios: base model only; 8 adapters round-robin, cache-warm (max_loras 8, warmed first);
a cold-adapter stream (every request names an adapter this app has never loaded).
Target from the issue: <= 10 % throughput loss against plain Ray Serve LLM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lorafleet_api.contract import RuntimeArgs
from lorafleet_operator.model.adaptercatalog import AdapterCatalogSpec
from lorafleet_operator.storage import StorageCredentials, scan_source
from lorafleet_runtime.adapters.index import write_index_directory, write_storage_options
from lorafleet_testbed import process
from lorafleet_testbed.adapter_trees import tree_files, upload_s3
from lorafleet_testbed.storage import MinioServer
from lorafleet_testbed.tinymodel import TINY_MODEL_ID, build_lora_adapter, build_tiny_model

OUT = Path(__file__).parent / "out"
CACHE = Path.home() / ".cache" / "lorafleet" / "bench-runtime"
BUCKET = "bench"
MODEL_ID = "tiny"
MAX_LORAS = 8
ENGINE = {
    "dtype": "float32",
    "enforce_eager": True,
    "gpu_memory_utilization": 0.2,
    "max_lora_rank": 8,
    "max_loras": MAX_LORAS,
    "enable_lora": True,
}


def build_adapters(base: Path, warm: int, cold: int, rounds: int) -> dict[str, Path]:
    folders = {f"w{i}": build_lora_adapter(base, CACHE / f"w{i}", seed=i) for i in range(warm)}
    for i in range(cold):
        folder = build_lora_adapter(base, CACHE / f"c{i}", seed=100 + i)
        # Separate names per app and per run: each cold stream is cold for its app.
        for run in range(2 * rounds):
            folders[f"plain-cold{run}-{i}"] = folder
            folders[f"ours-cold{run}-{i}"] = folder
    return folders


def upload(minio: MinioServer, folders: dict[str, Path]) -> None:
    client = minio.s3_client()
    client.create_bucket(Bucket=BUCKET)
    for name, folder in folders.items():
        upload_s3(client, BUCKET, f"loras/{name}/", tree_files(folder))


def write_index(minio: MinioServer, index_dir: Path) -> None:
    spec = AdapterCatalogSpec.model_validate(
        {
            "source": {"uri": f"s3://{BUCKET}/loras", "endpoint": minio.endpoint},
            "baseModel": TINY_MODEL_ID,
        }
    )
    credentials = StorageCredentials(
        secret_name="bench",
        data={"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key},
    )

    records = asyncio.run(scan_source(spec, credentials)).records
    write_index_directory(index_dir, "bench", "default", spec.source.location.uri, records)
    write_storage_options(index_dir, "bench", minio.endpoint, minio.region)


def ours_app(
    base: Path,
    index_dir: Path,
    *,
    replicas: int = 1,
    max_loras: int = MAX_LORAS,
    router: dict[str, Any] | None = None,
) -> Any:
    """lorafleet's Serve app on the vLLM CPU engine, reading the bench catalog's index."""
    from lorafleet_runtime.app import build_app

    args = RuntimeArgs.model_validate(
        {
            "model_id": MODEL_ID,
            "model_source": f"file://{base}",
            "catalogs": [{"name": "bench", "namespace": "default"}],
            "engine": {
                "max_loras": max_loras,
                "max_lora_rank": 8,
                "dtype": "float32",
                "gpu_memory_utilization": 0.2,
                "extra_engine_kwargs": {"enforce_eager": True},
            },
            "autoscaling_config": {"min_replicas": replicas, "max_replicas": replicas},
            "use_gpu": False,
            "catalog_index_dir": str(index_dir),
            **({"router": router} if router else {}),
        }
    )
    return build_app(args.to_serve_args())


@contextlib.contextmanager
def serving(
    folders: dict[str, Path], index_dir: Path, metrics_port: int | None = None
) -> Iterator[tuple[MinioServer, int]]:
    """MinIO holding ``folders`` (the bench catalog, its index written to ``index_dir``), then
    Ray (the MinIO credentials passed to the replicas) and Serve's HTTP proxy on a free port:
    yields the server and the port; everything is stopped on exit."""
    import ray
    from ray import serve

    minio = MinioServer()
    minio.start()
    try:
        upload(minio, folders)
        write_index(minio, index_dir)
        ray.init(
            num_cpus=8,
            include_dashboard=False,
            runtime_env={
                "env_vars": {
                    "AWS_ACCESS_KEY_ID": minio.access_key,
                    "AWS_SECRET_ACCESS_KEY": minio.secret_key,
                    "AWS_REGION": minio.region,
                }
            },
            **({"_metrics_export_port": metrics_port} if metrics_port else {}),
        )
        port = process.free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            yield minio, port
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        minio.close()


def plain_app(base: Path, minio: MinioServer) -> Any:
    from ray.serve.llm import LLMConfig, build_openai_app

    engine = {k: v for k, v in ENGINE.items() if k not in {"max_loras"}}
    config = LLMConfig(
        model_loading_config={"model_id": MODEL_ID, "model_source": str(base)},
        lora_config={
            "dynamic_lora_loading_path": f"s3://{BUCKET}/loras",
            "max_num_adapters_per_replica": MAX_LORAS,
        },
        engine_kwargs={**engine, "max_loras": MAX_LORAS},
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={"env_vars": {"AWS_ENDPOINT_URL": minio.endpoint}},
    )
    return build_openai_app({"llm_configs": [config]})


def request(url: str, model: str, max_tokens: int) -> tuple[int, float]:
    body = json.dumps(
        {
            "model": model,
            "prompt": "The quick brown fox",
            "max_tokens": max_tokens,
            "temperature": 0,
        }
    ).encode()
    req = urllib.request.Request(
        url + "/v1/completions", data=body, headers={"content-type": "application/json"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=300) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.perf_counter() - started


def run_scenario(url: str, models: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda m: request(url, m, max_tokens), models))
    wall = time.perf_counter() - started
    latencies = sorted(latency for _, latency in results)
    errors = sum(1 for status, _ in results if status != 200)
    return {
        "requests": len(results),
        "errors": errors,
        "seconds": round(wall, 3),
        "rps": round(len(results) / wall, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[max(0, int(len(latencies) * 0.95) - 1)] * 1000, 1),
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """All runs of one app in one scenario: throughput over all, median percentiles."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    return {
        "requests": requests,
        "errors": sum(r["errors"] for r in runs),
        "seconds": round(seconds, 3),
        "rps": round(requests / seconds, 2),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 1),
        "p95_ms": round(statistics.median(r["p95_ms"] for r in runs), 1),
        "runs": runs,
    }


def paired_ratio(plain: list[dict[str, Any]], ours: list[dict[str, Any]]) -> float:
    """Median over rounds of ours/plain throughput, each round's runs taken back to back."""
    return statistics.median(o["rps"] / p["rps"] for p, o in zip(plain, ours, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--cold", type=int, default=24, help="cold adapters per app")
    parser.add_argument(
        "--rounds", type=int, default=3, help="A-B-B-A rounds per scenario (median ratio)"
    )
    options = parser.parse_args()

    from ray import serve

    base = build_tiny_model(CACHE / "base")
    folders = build_adapters(base, MAX_LORAS, options.cold, options.rounds)
    index_dir = CACHE / "index"
    with serving(folders, index_dir) as (minio, port):
        deploy: dict[str, float] = {}
        apps: dict[str, Callable[[], Any]] = {
            "plain": lambda: plain_app(base, minio),
            "ours": lambda: ours_app(base, index_dir),
        }
        for name, make in apps.items():
            started = time.perf_counter()
            serve.run(make(), name=name, route_prefix=f"/{name}")
            deploy[name] = round(time.perf_counter() - started, 1)
        urls = {name: f"http://127.0.0.1:{port}/{name}" for name in apps}
        warm = [f"{MODEL_ID}:w{i}" for i in range(MAX_LORAS)]
        for url in urls.values():  # warm-up: engine paths and every warm adapter loaded
            run_scenario(url, [MODEL_ID, *warm], 1, options.max_tokens)
        n = options.requests
        scenarios: dict[str, Callable[[str, int], list[str]]] = {
            "base": lambda app, run: [MODEL_ID] * n,
            "8 adapters (warm)": lambda app, run: [warm[i % len(warm)] for i in range(n)],
            "cold adapters": lambda app, run: [
                f"{MODEL_ID}:{app}-cold{run}-{i}" for i in range(options.cold)
            ],
        }
        results: dict[str, dict[str, Any]] = {}
        for scenario, models_for in scenarios.items():
            runs: dict[str, list[dict[str, Any]]] = {app: [] for app in urls}
            # A-B-B-A per round: whichever app goes first or second, drift and warm-up hit
            # both alike; run k of one app is paired with run k of the other.
            for round_ in range(options.rounds):
                for position, app in enumerate(["plain", "ours", "ours", "plain"]):
                    run = 2 * round_ + (0 if position in (0, 1) else 1)
                    runs[app].append(
                        run_scenario(
                            urls[app], models_for(app, run), options.concurrency, options.max_tokens
                        )
                    )
            results[scenario] = {app: combine(r) for app, r in runs.items()}
            results[scenario]["ratio"] = paired_ratio(runs["plain"], runs["ours"])

    header = f"{'scenario':<20} {'app':<6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'errors':>6}"
    print(header)
    print("-" * len(header))
    for scenario, by_app in results.items():
        for app in ("plain", "ours"):
            r = by_app[app]
            print(
                f"{scenario:<20} {app:<6} {r['rps']:>7.2f} {r['p50_ms']:>8.1f} "
                f"{r['p95_ms']:>8.1f} {r['errors']:>6}"
            )
        change = by_app["ratio"] - 1
        print(f"{'':<20} ours vs plain throughput (median paired ratio): {change:+.1%}")
    print(f"deploy seconds: {deploy}")
    OUT.mkdir(exist_ok=True)
    report = {
        "options": vars(options),
        "deploy_seconds": deploy,
        "results": results,
    }
    (OUT / "runtime.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
