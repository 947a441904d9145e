"""The routing simulator (bench/routing.py): every policy runs on a tiny workload, the JSON has
the documented keys, Belady's MIN bounds every policy's hit rate on the same trace, workload
files reject unknown keys, and the simulator drives lorafleet's real policy code."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lorafleet_runtime.router.policy import LoraFleetPolicy

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench" / "routing.py"
METRICS = {
    "hit_rate",
    "cold_loads_per_1000",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "throughput_rps",
    "imbalance",
}


@pytest.fixture(scope="module")
def routing() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lorafleet_bench_routing", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _tiny(routing: ModuleType, **overrides: Any) -> Any:
    params: dict[str, Any] = {
        "name": "tiny",
        "requests": 600,
        "adapters": 30,
        "replicas": 3,
        "slots": 2,
        "zipf": 0.9,
    }
    params.update(overrides)
    return routing.workload_from_mapping(params)


def test_all_policies_run_and_json_has_the_documented_keys(
    routing: ModuleType, tmp_path: Path
) -> None:
    wl_file = tmp_path / "tiny.yaml"
    wl_file.write_text(
        "name: tiny\nrequests: 400\nadapters: 20\nreplicas: 3\nslots: 2\n"
        "hot_share: 0.3\ndrift_every: 150\nscale_events:\n  - {at: 0.5, replicas: 4}\n"
    )
    out = tmp_path / "out.json"
    assert routing.main(["--workload", str(wl_file), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    (workload,) = data["workloads"]
    assert {"name", "params", "belady_hit_rate", "policies"} <= set(workload)
    assert workload["name"] == "tiny"
    assert set(workload["policies"]) == set(routing.POLICIES)
    for name, metrics in workload["policies"].items():
        assert set(metrics) >= METRICS, name
        assert 0 <= metrics["hit_rate"] <= 1
        assert metrics["throughput_rps"] > 0
        assert metrics["imbalance"] >= 1 - 1e-9


@pytest.mark.parametrize("overrides", [{}, {"zipf": 1.2, "hot_share": 0.4}, {"drift_every": 100}])
def test_belady_bounds_every_policy(routing: ModuleType, overrides: dict[str, Any]) -> None:
    result = routing.run_workload(_tiny(routing, **overrides))
    bound = result["belady_hit_rate"]
    for name, metrics in result["policies"].items():
        assert metrics["hit_rate"] <= bound + 1e-12, (name, metrics["hit_rate"], bound)


def test_belady_is_optimal_on_a_known_sequence(routing: ModuleType) -> None:
    # Capacity 2, demand fetch (a request's adapter must be loaded, as on a replica): at c
    # MIN evicts b (used farthest ahead), so a hits and b misses; LRU would evict a and hit b.
    assert routing.belady_hit_rate(list("abcab"), 2) == pytest.approx(1 / 5)
    # a b a c a b: at c, evict b (next use 5) over a (next use 4): hits a, a -> 2 of 6.
    assert routing.belady_hit_rate(list("abacab"), 2) == pytest.approx(2 / 6)


def test_same_trace_for_every_policy(routing: ModuleType) -> None:
    wl = _tiny(routing)
    assert routing.make_trace(wl) == routing.make_trace(wl)


def test_unknown_workload_key_is_rejected(
    routing: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wl_file = tmp_path / "bad.yaml"
    wl_file.write_text("name: bad\nrequests: 100\nzipff: 0.9\n")
    with pytest.raises(routing.WorkloadError, match=r"unknown key\(s\) 'zipff'"):
        routing.load_workload(wl_file)
    assert routing.main(["--workload", str(wl_file)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) 'zipff'" in err
    assert "allowed keys: name, seed, requests" in err


def test_simulator_drives_lorafleet_policy_choose(
    routing: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = LoraFleetPolicy.choose

    def counting(self: LoraFleetPolicy, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LoraFleetPolicy, "choose", counting)
    wl = _tiny(routing, requests=200)
    routing.run_workload(wl, policies=["lorafleet"])
    assert calls["n"] == 200  # once per arriving request
    assert routing.LoraFleetPolicy is LoraFleetPolicy  # the same class, not a copy
