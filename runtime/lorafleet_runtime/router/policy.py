"""Adapter-aware placement policies: pure (no Ray, no I/O, no clock of their own).

Given the adapter a request names, the replicas as the router last saw them (in-flight
requests, which adapters sit where: GPU slot, vLLM's host-memory cache, local disk, being
loaded) and the requests routed before it, a policy returns replicas in ranked tiers. Ray Serve
sends the request to the least-loaded replica of the first tier that accepts it
(``router.serve``); the simulator in ``bench/routing.py`` drives these same classes.

Two policies:

- ``AffinityPolicy`` is the seed's algorithm (Ray Serve LLM's multi-LoRA docs): a holder that is
  not overloaded, else a less busy replica that loads the adapter, else power-of-two choices.
- ``LoraFleetPolicy`` (the default) prices each replica: its queue plus what the adapter costs
  to make usable there (nothing in a GPU slot, a swap from host memory, a read from disk, a
  download), plus the value of what a load would evict there, restricted to replicas whose
  load stays within ``load_bound_factor`` x the mean (bounded loads). Hot adapters get as many
  replicas as their share of traffic asks for (with hysteresis, capped by
  ``max_replicas_per_adapter``), rendezvous hashing breaks ties so every router agrees, and a
  load it started is remembered so concurrent first requests join it instead of loading the
  adapter on several replicas.

``FrequencyEviction`` is the replica side: which resident adapter a new load replaces (the one
requested least, decayed over time, instead of the least recently used)."""

from __future__ import annotations

import enum
import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Final, Protocol

# ------------------------------------------------------------------------------ vocabulary


class Tier(enum.IntEnum):
    """Where an adapter is on a replica, cheapest first."""

    GPU = 0
    CPU = 1
    LOADING = 2
    DISK = 3
    REMOTE = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class Reason(enum.StrEnum):
    """Why a replica was chosen (a bounded label for metrics)."""

    BASE = "base"  # no adapter: least-loaded
    HOLDER = "holder"  # the adapter is resident there
    JOIN = "join"  # a load of the adapter is under way there
    SPILL = "spill"  # holders are over the load bound: a new copy
    COPY = "copy"  # the adapter's demand asks for another copy
    COLD = "cold"  # no replica holds it: its first load
    FALLBACK = "fallback"  # nothing fits the rules (e.g. every replica overloaded)


@dataclass(slots=True)
class ReplicaState:
    """One replica as the router sees it.

    ``gpu``/``cpu``/``disk`` come from the replica's residency report (``cpu`` = registered in
    the engine without a GPU slot); ``loading`` are adapters a load is under way for.
    ``evict_value`` is what a new load would cost the replica: the decayed request rate of
    the adapter it would replace (0 with a free slot).

    Only ``queue_len`` may change in place; for new residency build a new state
    (``dataclasses.replace``): the tier table is computed once, at construction."""

    id: str
    queue_len: float = 0.0
    gpu: AbstractSet[str] = frozenset()
    cpu: AbstractSet[str] = frozenset()
    disk: AbstractSet[str] = frozenset()
    loading: AbstractSet[str] = frozenset()
    slots: int = 1
    max_ongoing: float = math.inf
    evict_value: float = 0.0
    where: dict[str, Tier] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = dict.fromkeys(self.disk, Tier.DISK)
        where.update(dict.fromkeys(self.loading, Tier.LOADING))
        where.update(dict.fromkeys(self.cpu, Tier.CPU))
        where.update(dict.fromkeys(self.gpu, Tier.GPU))
        self.where = where

    def tier(self, adapter: str) -> Tier:
        return self.where.get(adapter, Tier.REMOTE)

    @property
    def overloaded(self) -> bool:
        return self.queue_len >= self.max_ongoing


@dataclass(frozen=True, slots=True)
class Decision:
    """Replica ids in ranked tiers (the first tier is the choice; later tiers are what Serve
    tries if the first cannot take the request), the adapter's tier on the first choice as the
    router saw it, and why."""

    ranked: tuple[tuple[str, ...], ...]
    tier: Tier | None
    reason: Reason

    @property
    def first(self) -> str | None:
        return self.ranked[0][0] if self.ranked and self.ranked[0] else None


class Policy(Protocol):
    name: str

    def choose(
        self, adapter: str | None, replicas: Sequence[ReplicaState], now: float
    ) -> Decision: ...


# ------------------------------------------------------------------------------ hashing


_MASK64: Final = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a fast, well-spread, process-independent 64-bit mix (Python's
    own ``hash`` of strings is salted per process, so two routers would disagree)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _key64(text: str) -> int:
    """A stable 64-bit key of a string (FNV-1a over its UTF-8 bytes)."""
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value = ((value ^ byte) * 0x100000001B3) & _MASK64
    return value


class Rendezvous:
    """Highest-random-weight order of replicas per adapter, cached until the replica set
    changes (a changed set re-ranks lazily; an adapter keeps every home that stayed)."""

    def __init__(self, max_cached: int = 20_000) -> None:
        self._max_cached = max_cached
        self._replica_keys: dict[str, int] = {}
        self._members: frozenset[str] = frozenset()
        self._orders: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._ranks: OrderedDict[tuple[str, ...], dict[str, int]] = OrderedDict()

    def order_and_rank(
        self, adapter: str, replicas: Sequence[ReplicaState]
    ) -> tuple[tuple[str, ...], dict[str, int]]:
        """``order`` plus each replica's position in it (cached with it)."""
        order = self.order(adapter, [r.id for r in replicas])
        rank = self._ranks.get(order)
        if rank is None:
            rank = {rid: i for i, rid in enumerate(order)}
            self._ranks[order] = rank
            if len(self._ranks) > self._max_cached:
                self._ranks.popitem(last=False)
        return order, rank

    def order(self, adapter: str, replica_ids: Iterable[str]) -> tuple[str, ...]:
        members = frozenset(replica_ids)
        if members != self._members:
            self._ranks.clear()
            self._members = members
            self._orders.clear()
            self._replica_keys = {r: _key64(r) for r in members}
        cached = self._orders.get(adapter)
        if cached is not None:
            self._orders.move_to_end(adapter)
            return cached
        key = _key64(adapter)
        keys = self._replica_keys
        ranked = tuple(sorted(members, key=lambda r: (-_mix64(key ^ keys[r]), r)))
        self._orders[adapter] = ranked
        if len(self._orders) > self._max_cached:
            self._orders.popitem(last=False)
        return ranked


# ------------------------------------------------------------------------------ demand


class DecayedCounts:
    """Per-key request counts that decay exponentially (half-life ``half_life_s``): a rate
    estimate that forgets old popularity, in O(1) per event. Bounded: the smallest entries
    are dropped past ``max_keys``."""

    def __init__(self, half_life_s: float = 60.0, max_keys: int = 50_000) -> None:
        self._rate = math.log(2) / half_life_s
        self._max_keys = max_keys
        self._counts: dict[str, tuple[float, float]] = {}
        self._total = (0.0, 0.0)

    def _decayed(self, entry: tuple[float, float], now: float) -> float:
        value, stamp = entry
        return value * math.exp(-self._rate * max(0.0, now - stamp))

    def add(self, key: str, now: float, amount: float = 1.0) -> None:
        entry = self._counts.get(key)
        self._counts[key] = ((self._decayed(entry, now) if entry else 0.0) + amount, now)
        self._total = (self._decayed(self._total, now) + amount, now)
        if len(self._counts) > self._max_keys:
            self._prune(now)

    def get(self, key: str, now: float) -> float:
        entry = self._counts.get(key)
        return self._decayed(entry, now) if entry else 0.0

    def total(self, now: float) -> float:
        return self._decayed(self._total, now)

    def share(self, key: str, now: float) -> float:
        total = self.total(now)
        return self.get(key, now) / total if total > 0 else 0.0

    def last_seen(self, key: str) -> float:
        """When ``key`` was last added (-inf if never or forgotten)."""
        entry = self._counts.get(key)
        return entry[1] if entry else -math.inf

    def _prune(self, now: float) -> None:
        ranked = sorted(self._counts, key=lambda k: self._decayed(self._counts[k], now))
        for key in ranked[: len(ranked) - self._max_keys * 9 // 10]:
            del self._counts[key]


class FrequencyEviction:
    """A replica's choice of which resident adapter a new load replaces: the least requested
    one (decayed counts), ties broken by least recent use; adapters with requests running are
    skipped while any other can go. Pure: the caller reports requests and asks."""

    def __init__(self, half_life_s: float = 60.0) -> None:
        self.counts = DecayedCounts(half_life_s)

    def record(self, adapter: str, now: float) -> None:
        self.counts.add(adapter, now)

    def victim(
        self, resident: Iterable[str], now: float, busy: AbstractSet[str] = frozenset()
    ) -> str | None:
        candidates = list(resident)
        if not candidates:
            return None
        idle = [a for a in candidates if a not in busy] or candidates
        counts = self.counts
        return min(idle, key=lambda a: (counts.get(a, now), counts.last_seen(a), a))

    def value(self, resident: Iterable[str], slots: int, now: float) -> float:
        """What a new load would evict (0 while a slot is free): ``ReplicaState.evict_value``."""
        residents = list(resident)
        if len(residents) < slots:
            return 0.0
        victim = self.victim(residents, now)
        return 0.0 if victim is None else self.counts.get(victim, now)


# ------------------------------------------------------------------------------ policies


def _least_loaded(replicas: Sequence[ReplicaState], rng: random.Random) -> ReplicaState:
    low = min(r.queue_len for r in replicas)
    return rng.choice([r for r in replicas if r.queue_len == low])


def _power_of_two(replicas: Sequence[ReplicaState], rng: random.Random) -> ReplicaState:
    if len(replicas) == 1:
        return replicas[0]
    a, b = rng.sample(list(replicas), 2)
    return a if a.queue_len <= b.queue_len else b


def _ranked(first: ReplicaState, replicas: Sequence[ReplicaState]) -> tuple[tuple[str, ...], ...]:
    rest = tuple(r.id for r in sorted(replicas, key=lambda r: r.queue_len) if r.id != first.id)
    return ((first.id,), rest) if rest else ((first.id,),)


class AffinityPolicy:
    """The seed's algorithm, exactly (Ray Serve LLM's multi-LoRA user guide):

    1. a replica that holds the adapter and is not overloaded gets the request (power of two
       choices among such holders);
    2. if every holder is overloaded, a less busy replica gets it (the least loaded of the
       replicas that are not overloaded) and loads the adapter;
    3. if no replica holds it, power of two choices over all replicas picks one, which loads it.

    "Holds" is Ray Serve's multiplexed view: resident or being loaded. "Overloaded" is a queue
    at the replica's ``max_ongoing`` (Ray Serve's rule). Eviction on the replica stays LRU."""

    name = "affinity"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - load spreading, not security

    def choose(self, adapter: str | None, replicas: Sequence[ReplicaState], now: float) -> Decision:
        if not replicas:
            return Decision((), None, Reason.FALLBACK)
        if adapter is None:
            pick = _power_of_two(replicas, self._rng)
            return Decision(_ranked(pick, replicas), None, Reason.BASE)
        holders = [r for r in replicas if r.tier(adapter) <= Tier.LOADING]
        free_holders = [r for r in holders if not r.overloaded]
        if free_holders:
            pick = _power_of_two(free_holders, self._rng)
            reason = Reason.JOIN if pick.tier(adapter) == Tier.LOADING else Reason.HOLDER
        elif holders:
            others = [r for r in replicas if not r.overloaded] or list(replicas)
            pick = _least_loaded(others, self._rng)
            reason = Reason.SPILL
        else:
            pick = _power_of_two(replicas, self._rng)
            reason = Reason.COLD
        return Decision(_ranked(pick, replicas), pick.tier(adapter), reason)


# Default costs of making an adapter usable on a replica, in queued-request equivalents: a
# GPU slot is free, a swap from host memory is milliseconds, a read from local disk plus the
# engine's registration is a fraction of a second, a download is seconds (see docs/routing.md
# for the figures behind them).
DEFAULT_TIER_COST: Final[dict[Tier, float]] = {
    Tier.GPU: 0.0,
    Tier.CPU: 3.0,
    Tier.LOADING: 9.0,
    Tier.DISK: 24.0,
    Tier.REMOTE: 36.0,
}


@dataclass
class LoraFleetSettings:
    """The knobs of ``LoraFleetPolicy`` (``LoRAModel.spec.router``)."""

    load_bound_factor: float = 1.4
    max_replicas_per_adapter: int | None = None
    # Queue slack every replica has before the load bound applies: continuous batching runs
    # a few requests side by side at almost no extra cost.
    min_slack: float = 2.0
    half_life_s: float = 60.0
    copy_hysteresis_s: float = 30.0
    # Extra requests a replica that is loading the adapter may take beyond the bound.
    join_slack: float = 8.0
    # A load the router started, trusted until a residency report shows it (seconds).
    pending_load_s: float = 10.0
    tier_cost: dict[Tier, float] = field(default_factory=lambda: dict(DEFAULT_TIER_COST))
    # Cost (queued-request equivalents) per unit of log(1 + evicted adapter's rate).
    evict_weight: float = 2.0
    # A replica outside the adapter's wanted copies costs this much more.
    non_home_cost: float = 1.0
    # Up to this many replicas every decision prices all of them; above, a new copy is
    # priced on the adapter's homes plus this many sampled replicas.
    full_scan_replicas: int = 16
    sample_replicas: int = 4
    max_pending_adapters: int = 10_000
    # Loads remembered per adapter (the most recent): bounds a decision's work.
    max_pending_per_adapter: int = 4


class LoraFleetPolicy:
    """lorafleet's placement: residency- and eviction-priced choice under a load bound, with
    demand-proportional copies (see the module docstring and docs/routing.md)."""

    name = "lorafleet"

    def __init__(self, settings: LoraFleetSettings | None = None, seed: int = 0) -> None:
        self.settings = settings or LoraFleetSettings()
        self.demand = DecayedCounts(self.settings.half_life_s)
        self._hrw = Rendezvous()
        # adapter -> (copies wanted, time the lower target was first seen or None)
        self._copies: dict[str, tuple[int, float | None]] = {}
        # adapter -> {replica: time this router sent the adapter's first request there}
        self._pending: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._rng = random.Random(seed)  # noqa: S311 - sampling replicas, not security

    # -- demand-proportional copies, with hysteresis ------------------------------------
    def copies(self, adapter: str, replicas: int, now: float) -> int:
        """How many replicas ``adapter`` should be on: its share of recent traffic times the
        replica count, rounded up; grows at once, shrinks only after the lower value held for
        ``copy_hysteresis_s``."""
        cap = min(replicas, self.settings.max_replicas_per_adapter or replicas)
        want = max(1, min(cap, math.ceil(self.demand.share(adapter, now) * replicas - 1e-9)))
        current, lower_since = self._copies.get(adapter, (want, None))
        current = min(current, cap)
        if want >= current:
            self._copies[adapter] = (want, None)
            return want
        if lower_since is None:
            self._copies[adapter] = (current, now)
            return current
        if now - lower_since >= self.settings.copy_hysteresis_s:
            self._copies[adapter] = (want, None)
            return want
        return current

    def choose(self, adapter: str | None, replicas: Sequence[ReplicaState], now: float) -> Decision:
        if not replicas:
            return Decision((), None, Reason.FALLBACK)
        settings = self.settings
        n = len(replicas)
        total = 0.0
        for r in replicas:
            total += r.queue_len
        mean_after = (total + 1) / n
        bound = max(settings.load_bound_factor * mean_after, mean_after + settings.min_slack)
        if adapter is None:
            within = [r for r in replicas if r.queue_len + 1 <= bound and not r.overloaded]
            pool = within or [r for r in replicas if not r.overloaded] or list(replicas)
            pick = min(pool, key=lambda r: (r.queue_len, r.id))
            return Decision(_ranked(pick, replicas), None, Reason.BASE)

        self.demand.add(adapter, now)
        order, rank = self._hrw.order_and_rank(adapter, replicas)
        copies = self.copies(adapter, n, now)
        homes = order[:copies]
        pending = self._pending.get(adapter)
        if pending:
            for rid in [rid for rid, t in pending.items() if now - t >= settings.pending_load_s]:
                del pending[rid]
        # Candidates: every replica where the adapter is (GPU, host memory, loading, disk),
        # plus, for a new copy, every replica on a small cluster, or on a large one its homes
        # and a few sampled replicas (power of d choices: the decision stays O(holders + d)).
        where = [(r, t) for r in replicas if (t := r.where.get(adapter)) is not None]
        if n <= settings.full_scan_replicas:
            others: Iterable[ReplicaState] = replicas
        else:
            # Sampled with replacement (a repeat is priced twice, harmlessly).
            others = self._rng.choices(replicas, k=settings.sample_replicas)
            wanted = {*homes[: settings.sample_replicas], *(pending or ())}
            others += [r for r in replicas if r.id in wanted]
        cost = settings.tier_cost
        join_bound = bound + settings.join_slack
        evict_weight = settings.evict_weight
        non_home = settings.non_home_cost
        holders = any(tier <= Tier.LOADING for _, tier in where)
        holders_over = False
        best: ReplicaState | None = None
        best_key = (math.inf, n)
        best_tier = Tier.REMOTE
        fallback: ReplicaState | None = None
        fallback_key = (math.inf, n)
        fallback_tier = Tier.REMOTE

        def consider(r: ReplicaState, tier: Tier) -> None:
            nonlocal best, best_key, best_tier, fallback, fallback_key, fallback_tier
            nonlocal holders_over
            if tier > Tier.LOADING and pending and r.id in pending:
                tier = Tier.LOADING
            q = r.queue_len
            price = cost[tier] + q
            if tier > Tier.LOADING and r.evict_value:
                price += evict_weight * math.log1p(r.evict_value)
            position = rank[r.id]
            if position >= copies:
                price += non_home
            key = (price, position)
            overloaded = q >= r.max_ongoing
            if overloaded or q + 1 > (join_bound if tier == Tier.LOADING else bound):
                if tier <= Tier.LOADING:
                    holders_over = True
                if not overloaded and key < fallback_key:
                    fallback, fallback_key, fallback_tier = r, key, tier
            elif key < best_key:
                best, best_key, best_tier = r, key, tier

        for r, tier in where:
            consider(r, tier)
        for r in others:
            if adapter not in r.where:
                consider(r, Tier.REMOTE)
        if pending and not holders:
            holders = any(rid in rank for rid in pending)
        if best is not None:
            pick, tier = best, best_tier
            if tier <= Tier.CPU:
                reason = Reason.HOLDER
            elif tier == Tier.LOADING:
                reason = Reason.JOIN
            elif not holders:
                reason = Reason.COLD
            elif holders_over:
                reason = Reason.SPILL
            else:
                reason = Reason.COPY
        else:
            pick = fallback if fallback is not None else min(replicas, key=lambda r: r.queue_len)
            tier = fallback_tier if fallback is not None else pick.tier(adapter)
            reason = Reason.FALLBACK
        if tier > Tier.LOADING:
            loads = self._pending.get(adapter)
            if loads is None:
                loads = self._pending[adapter] = {}
            else:
                self._pending.move_to_end(adapter)
            loads[pick.id] = now
            if len(loads) > settings.max_pending_per_adapter:
                del loads[min(loads, key=loads.__getitem__)]
        elif tier <= Tier.CPU and pending:
            pending.pop(pick.id, None)
        self._expire_pending(now)
        at = rank[pick.id]
        rest = order[:at] + order[at + 1 :]
        ranked = ((pick.id,), rest) if rest else ((pick.id,),)
        return Decision(ranked, tier, reason)

    def _expire_pending(self, now: float, budget: int = 4) -> None:
        """Forget loads older than ``pending_load_s`` (oldest adapters first, a few per
        decision: amortised O(1)) and keep at most ``max_pending_adapters`` adapters."""
        pending = self._pending
        horizon = now - self.settings.pending_load_s
        for _ in range(budget):
            if not pending:
                return
            adapter, loads = next(iter(pending.items()))
            if (
                len(pending) <= self.settings.max_pending_adapters
                and max(loads.values(), default=-math.inf) > horizon
            ):
                return
            del pending[adapter]


POLICIES: Final = ("lorafleet", "affinity")


def make_policy(
    name: str,
    *,
    load_bound_factor: float | None = None,
    max_replicas_per_adapter: int | None = None,
    seed: int = 0,
) -> Policy:
    """The policy a LoRAModel's ``spec.router`` names (``ray`` is Ray Serve's own router and
    has no policy object here)."""
    if name == "affinity":
        return AffinityPolicy(seed=seed)
    if name == "lorafleet":
        settings = LoraFleetSettings()
        if load_bound_factor is not None:
            settings.load_bound_factor = load_bound_factor
        settings.max_replicas_per_adapter = max_replicas_per_adapter
        return LoraFleetPolicy(settings, seed=seed)
    raise ValueError(f"unknown routing policy {name!r}; expected one of {', '.join(POLICIES)}")
