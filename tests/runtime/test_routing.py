"""lorafleet's request router on real Ray Serve: two vLLM CPU replicas, the `lorafleet` policy
(the LoRAModel default). What a user sees: repeated requests for one adapter load it once
(they stay on its holder), a hot adapter gets a second copy when its holder is busy, and every
response says where its adapter was (`x-lorafleet-adapter-tier`)."""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from lorafleet_testbed.controlplane import ControlPlane

from .conftest import MODEL_ID, Catalogs, Deployment, serve_lorafleet

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def two_replicas(
    catalogs: Catalogs, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    spec = {"replicas": {"min": 2, "max": 2}, "router": {"policy": "lorafleet"}}
    with serve_lorafleet(
        catalogs, control_plane, tmp_path_factory.mktemp("adapter-cache"), spec=spec
    ) as served:
        yield served


def _complete(
    deployment: Deployment,
    model: str,
    *,
    max_tokens: int = 4,
    stream: bool = False,
    long: bool = False,
) -> tuple[str | None, str]:
    """POST /completions; the tier header and the body (``long``: all ``max_tokens`` tokens,
    whatever the model would stop at)."""
    body: dict[str, object] = {
        "model": model,
        "prompt": "The quick",
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    if long:
        body["ignore_eos"] = True
    request = urllib.request.Request(
        deployment.base_url + "/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 200
        return response.headers.get("x-lorafleet-adapter-tier"), response.read().decode()


def _metric_sum(deployment: Deployment, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` (all replicas) with ``labels``."""
    with urllib.request.urlopen(deployment.metrics_url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not re.match(rf"^(ray_)?{name}(_total)?{{", line):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _eventually(read: Callable[[], float], accept: Callable[[float], bool], what: str) -> None:
    """Ray's metrics agent exports every few seconds: poll until ``accept`` holds."""
    deadline = time.monotonic() + 90
    value = None
    while time.monotonic() < deadline:
        value = read()
        if accept(value):
            return
        time.sleep(1)
    pytest.fail(f"{what}: last read {value}")


def test_repeated_requests_stay_on_the_holder_and_say_where_the_adapter_was(
    two_replicas: Deployment,
) -> None:
    tiers = [_complete(two_replicas, f"{MODEL_ID}:a0")[0] for _ in range(6)]
    # Fresh replicas: the first request downloaded it; every later one found it in a slot.
    assert tiers == ["remote", "gpu", "gpu", "gpu", "gpu", "gpu"]
    streamed_tier, streamed = _complete(two_replicas, f"{MODEL_ID}:a0", stream=True)
    assert streamed_tier == "gpu"
    assert "data: [DONE]" in streamed
    assert _complete(two_replicas, MODEL_ID)[0] == "base"
    # Loaded once in all: the other replica never got a request for it.
    _eventually(
        lambda: _metric_sum(two_replicas, "lorafleet_adapter_loads", adapter="a0"),
        lambda loads: loads == 1,
        "one engine load of a0 over both replicas",
    )

    # The router's own counters say the same: after the first load, every request went to the
    # replica holding a0 ("holder"; "join" while its completion is not yet counted).
    def stayed() -> float:
        return sum(
            _metric_sum(two_replicas, "lorafleet_router_decisions", policy="lorafleet", reason=r)
            for r in ("holder", "join")
        )

    _eventually(stayed, lambda decisions: decisions >= 6, "routing decisions to a0's holder")
    # A hit is a decision for a replica holding the adapter in a slot: one per "holder".
    holder = _metric_sum(
        two_replicas, "lorafleet_router_decisions", policy="lorafleet", reason="holder"
    )
    assert holder >= 1
    assert _metric_sum(two_replicas, "lorafleet_router_hits", policy="lorafleet") == holder


def test_a_hot_adapter_gets_a_second_copy_when_its_holder_is_busy(
    two_replicas: Deployment,
) -> None:
    # Loaded on one replica first (its load is done before the burst).
    assert _complete(two_replicas, f"{MODEL_ID}:a1")[0] == "remote"
    # Twelve long requests at once: the holder takes a few (its load bound), the rest spill.
    start = threading.Barrier(12)

    def burst(_: int) -> str | None:
        start.wait()
        return _complete(two_replicas, f"{MODEL_ID}:a1", max_tokens=128, long=True)[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        tiers = list(pool.map(burst, range(12)))
    # Some found it in a slot; the first one sent to the second copy found it missing.
    assert tiers.count("gpu") >= 4, tiers
    assert {"remote", "disk"} & set(tiers), tiers
    _eventually(
        lambda: _metric_sum(two_replicas, "lorafleet_adapter_loads", adapter="a1"),
        lambda loads: loads == 2,
        "engine loads of a1 over both replicas",
    )
    _eventually(
        lambda: _metric_sum(
            two_replicas, "lorafleet_router_decisions", policy="lorafleet", reason="spill"
        ),
        lambda spills: spills >= 1,
        "a spill decision for the busy holder",
    )


def _replica_actors() -> dict[str, object]:
    """The LLM replicas' actors, by name."""
    import ray

    named: list[dict[str, str]] = ray.util.list_named_actors(all_namespaces=True)  # type: ignore[assignment]
    return {
        actor["name"]: ray.get_actor(actor["name"], namespace="serve")
        for actor in named
        if actor["namespace"] == "serve"
        and actor["name"].startswith("SERVE_REPLICA::lorafleet#LoraFleetServer")
    }


def test_requests_keep_being_answered_when_the_holder_dies(two_replicas: Deployment) -> None:
    import ray

    assert _complete(two_replicas, f"{MODEL_ID}:a2")[0] in {"remote", "disk"}
    actors = _replica_actors()
    holders = [
        name
        for name, actor in actors.items()
        if "a2" in ray.get(actor.record_routing_stats.remote(), timeout=60)["lorafleet"]["engine"]  # type: ignore[attr-defined]
    ]
    assert len(holders) == 1, holders
    ray.kill(actors[holders[0]])  # type: ignore[arg-type]
    # The router drops the dead replica and the other one loads the adapter: no error.
    tiers = [_complete(two_replicas, f"{MODEL_ID}:a2")[0] for _ in range(3)]
    assert tiers[0] in {"remote", "disk"}, tiers
    assert tiers[1:] == ["gpu", "gpu"], tiers
