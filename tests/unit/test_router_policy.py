"""The routing policies: the seed's algorithm step by step, and lorafleet's invariants."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from lorafleet_runtime.router.policy import (
    AffinityPolicy,
    FrequencyEviction,
    LoraFleetPolicy,
    LoraFleetSettings,
    Reason,
    Rendezvous,
    ReplicaState,
    Tier,
    make_policy,
)

pytestmark = pytest.mark.unit


def _replicas(n: int, **fields: object) -> list[ReplicaState]:
    return [ReplicaState(id=f"r{i}", slots=4, **fields) for i in range(n)]  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- affinity


def test_affinity_step1_a_holder_that_is_not_overloaded_gets_the_request() -> None:
    policy = AffinityPolicy(seed=1)
    replicas = _replicas(4, max_ongoing=8)
    replicas[2] = replace(replicas[2], gpu=frozenset({"a"}))
    replicas[2].queue_len = 5  # busier than everyone else, but not overloaded
    for _ in range(20):
        decision = policy.choose("a", replicas, 0.0)
        assert decision.first == "r2"
        assert decision.reason is Reason.HOLDER
        assert decision.tier is Tier.GPU


def test_affinity_step2_overloaded_holders_send_it_to_a_less_busy_replica() -> None:
    policy = AffinityPolicy(seed=1)
    replicas = _replicas(4, max_ongoing=8)
    replicas[0] = replace(replicas[0], gpu=frozenset({"a"}))
    replicas[0].queue_len = 8  # at max_ongoing: overloaded
    replicas[1].queue_len = 3
    replicas[2].queue_len = 1
    replicas[3].queue_len = 6
    decision = policy.choose("a", replicas, 0.0)
    assert decision.first == "r2"
    assert decision.reason is Reason.SPILL
    assert decision.tier is Tier.REMOTE


def test_affinity_step3_no_holder_power_of_two_choices() -> None:
    policy = AffinityPolicy(seed=3)
    replicas = _replicas(3)
    replicas[0].queue_len = 9
    replicas[1].queue_len = 0
    replicas[2].queue_len = 5
    picks = Counter(policy.choose("new", replicas, 0.0).first for _ in range(300))
    # Two random replicas, the less loaded wins: the busiest never does, the idlest wins
    # every pair it is in (2 of 3 pairs).
    assert picks["r0"] == 0
    assert 150 < picks["r1"] < 250
    assert all(policy.choose("new", replicas, 0.0).reason is Reason.COLD for _ in range(5))


def test_affinity_counts_a_replica_loading_the_adapter_as_a_holder() -> None:
    # Ray Serve advertises a model while it loads: the seed's "holds" includes that.
    policy = AffinityPolicy()
    replicas = _replicas(3)
    replicas[1] = replace(replicas[1], loading=frozenset({"a"}))
    decision = policy.choose("a", replicas, 0.0)
    assert decision.first == "r1"
    assert decision.reason is Reason.JOIN


# ----------------------------------------------------------------------------- lorafleet


def test_residency_order_gpu_beats_host_memory_beats_disk_beats_download() -> None:
    policy = LoraFleetPolicy()
    replicas = _replicas(4)
    replicas[0] = replace(replicas[0], disk=frozenset({"a"}))
    replicas[1] = replace(replicas[1], cpu=frozenset({"a"}))
    replicas[2] = replace(replicas[2], gpu=frozenset({"a"}))
    assert policy.choose("a", replicas, 0.0).first == "r2"
    replicas[2] = replace(replicas[2], gpu=frozenset())
    assert policy.choose("a", replicas, 1.0).first == "r1"
    replicas[1] = replace(replicas[1], cpu=frozenset())
    assert policy.choose("a", replicas, 2.0).first == "r0"


def test_a_loading_replica_does_not_take_the_request_from_a_free_holder() -> None:
    policy = LoraFleetPolicy()
    replicas = _replicas(3)
    replicas[0] = replace(replicas[0], loading=frozenset({"a"}))
    replicas[1] = replace(replicas[1], gpu=frozenset({"a"}))
    replicas[1].queue_len = 1
    decision = policy.choose("a", replicas, 0.0)
    assert decision.first == "r1"
    assert decision.reason is Reason.HOLDER


def test_concurrent_first_requests_load_a_new_adapter_on_one_replica_only() -> None:
    policy = LoraFleetPolicy()
    replicas = _replicas(8)
    queue = Counter[str]()
    chosen = set()
    for i in range(6):
        # No residency report has arrived yet: the router only knows what it decided.
        for r in replicas:
            r.queue_len = queue[r.id]
        decision = policy.choose("fresh", replicas, 0.01 * i)
        chosen.add(decision.first)
        queue[decision.first or ""] += 1
        if i:
            assert decision.reason is Reason.JOIN
    assert len(chosen) == 1


def _route_hot(
    policy: LoraFleetPolicy, replicas: list[ReplicaState], adapter: str, n: int, holds: bool
) -> Counter[str]:
    """Send ``n`` concurrent requests (none completes); a replica a request went to holds
    the adapter from then on when ``holds``."""
    sent = Counter[str]()
    for i in range(n):
        decision = policy.choose(adapter, replicas, 0.001 * i)
        assert decision.first is not None
        index = next(i for i, r in enumerate(replicas) if r.id == decision.first)
        replicas[index].queue_len += 1
        if holds:
            replicas[index] = replace(replicas[index], gpu=replicas[index].gpu | {adapter})
        sent[decision.first] += 1
    return sent


def test_bounded_load_no_replica_exceeds_the_bound() -> None:
    settings = LoraFleetSettings(load_bound_factor=1.25, min_slack=2.0)
    policy = LoraFleetPolicy(settings)
    replicas = _replicas(4)
    replicas[0] = replace(replicas[0], gpu=frozenset({"hot"}))
    _route_hot(policy, replicas, "hot", 80, holds=True)
    mean = sum(r.queue_len for r in replicas) / len(replicas)
    bound = max(settings.load_bound_factor * mean, mean + settings.min_slack)
    assert max(r.queue_len for r in replicas) <= bound + 1


def test_a_hot_adapter_is_spread_over_several_replicas() -> None:
    policy = LoraFleetPolicy()
    replicas = _replicas(4)
    # Traffic: one adapter takes most of it.
    for i in range(200):
        policy.demand.add("hot" if i % 4 else f"cold{i}", 0.0)
    assert policy.copies("hot", 4, 0.0) >= 3
    sent = _route_hot(policy, replicas, "hot", 40, holds=True)
    assert len(sent) >= 3
    assert sum(1 for r in replicas if "hot" in r.gpu) >= 3


def test_copies_shrink_only_after_the_hysteresis_period() -> None:
    policy = LoraFleetPolicy(LoraFleetSettings(half_life_s=1.0, copy_hysteresis_s=30.0))
    for _ in range(100):
        policy.demand.add("hot", 0.0)
    assert policy.copies("hot", 8, 0.0) == 8
    for _ in range(1000):
        policy.demand.add("other", 10.0)  # "hot" has faded
    assert policy.copies("hot", 8, 10.0) == 8  # lower target first seen
    assert policy.copies("hot", 8, 25.0) == 8  # still within the period
    assert policy.copies("hot", 8, 41.0) == 1


def test_max_replicas_per_adapter_caps_the_copies() -> None:
    policy = make_policy("lorafleet", max_replicas_per_adapter=2)
    assert isinstance(policy, LoraFleetPolicy)
    for _ in range(100):
        policy.demand.add("hot", 0.0)
    assert policy.copies("hot", 8, 0.0) == 2


def test_losing_a_replica_moves_only_its_adapters_and_requests_still_route() -> None:
    policy = LoraFleetPolicy()
    replicas = _replicas(4)
    replicas[1] = replace(replicas[1], gpu=frozenset({"a"}))
    replicas[2] = replace(replicas[2], gpu=frozenset({"b"}))
    assert policy.choose("a", replicas, 0.0).first == "r1"
    survivors = [r for r in replicas if r.id != "r1"]
    decision = policy.choose("a", survivors, 1.0)
    assert decision.first in {"r0", "r2", "r3"}
    assert decision.tier is Tier.REMOTE
    assert policy.choose("b", survivors, 2.0).first == "r2"


def test_scale_up_a_new_idle_replica_takes_new_adapters_and_keeps_holders() -> None:
    policy = LoraFleetPolicy()
    replicas = _replicas(3)
    for i, r in enumerate(replicas):
        # Every slot is taken, a few requests are running.
        held = frozenset({f"held{i}", f"x{i}", f"y{i}", f"z{i}"})
        replicas[i] = replace(r, gpu=held, queue_len=3, evict_value=5.0)
    new = ReplicaState(id="r-new", slots=4)
    grown = [*replicas, new]
    # Holders keep their adapters' traffic...
    assert policy.choose("held1", grown, 0.0).first == "r1"
    # ...and a new adapter goes where a load evicts nothing and nobody waits.
    assert policy.choose("brand-new", grown, 0.0).first == "r-new"


def test_a_cold_adapter_is_served_when_every_slot_is_busy() -> None:
    policy = LoraFleetPolicy()
    replicas = _replicas(3)
    values = [9.0, 0.5, 4.0]
    for i, r in enumerate(replicas):
        replicas[i] = replace(
            r, gpu=frozenset({f"a{i}{j}" for j in range(4)}), evict_value=values[i]
        )
    decision = policy.choose("rare", replicas, 0.0)
    # It is served, on the replica whose load evicts the least valuable adapter.
    assert decision.first == "r1"
    assert decision.reason is Reason.COLD


def test_base_model_requests_go_to_the_least_loaded_replica() -> None:
    policy = LoraFleetPolicy()
    replicas = _replicas(3)
    for r, q in zip(replicas, (4, 1, 2), strict=True):
        r.queue_len = q
    decision = policy.choose(None, replicas, 0.0)
    assert decision.first == "r1"
    assert decision.tier is None
    assert decision.reason is Reason.BASE


def test_every_replica_is_ranked_so_serve_can_fall_back() -> None:
    policy = LoraFleetPolicy()
    replicas = _replicas(5)
    decision = policy.choose("a", replicas, 0.0)
    ranked = [rid for tier in decision.ranked for rid in tier]
    assert sorted(ranked) == sorted(r.id for r in replicas)
    assert len(decision.ranked[0]) == 1


def test_no_replicas_means_no_choice() -> None:
    assert LoraFleetPolicy().choose("a", [], 0.0).first is None
    assert AffinityPolicy().choose("a", [], 0.0).first is None


def test_unknown_policy_name_is_refused() -> None:
    with pytest.raises(ValueError, match="lorafleet, affinity"):
        make_policy("ray")


# ----------------------------------------------------------------------------- pieces


def test_rendezvous_order_is_the_same_in_every_router_and_moves_little_on_change() -> None:
    one, two = Rendezvous(), Rendezvous()
    members = [f"replica-{i}" for i in range(8)]
    shuffled = random.Random(5).sample(members, len(members))
    adapters = [f"adapter-{i}" for i in range(500)]
    assert all(one.order(a, members) == two.order(a, shuffled) for a in adapters)
    before = {a: one.order(a, members)[0] for a in adapters}
    after = {a: one.order(a, members[:-1])[0] for a in adapters}
    moved = [a for a in adapters if before[a] != after[a]]
    # Only the adapters whose first home left move (about 1/8 of them).
    assert all(before[a] == members[-1] for a in moved)
    assert 30 < len(moved) < 100


def test_frequency_eviction_keeps_the_popular_adapter_that_lru_would_drop() -> None:
    eviction = FrequencyEviction(half_life_s=60.0)
    for t in range(20):
        eviction.record("popular", float(t))
    eviction.record("once-a", 30.0)
    eviction.record("once-b", 31.0)
    # LRU would drop "popular" (least recently used); frequency keeps it.
    assert eviction.victim(["popular", "once-a", "once-b"], 32.0) == "once-a"
    # An adapter with requests running is not evicted while another can go.
    assert eviction.victim(["popular", "once-a"], 32.0, busy={"once-a"}) == "popular"
    assert eviction.value(["popular", "once-a"], slots=4, now=32.0) == 0.0
    assert eviction.value(["popular", "once-a"], slots=2, now=32.0) == pytest.approx(1.0, rel=0.05)
