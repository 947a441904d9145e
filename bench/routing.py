"""Routing simulator: a seeded discrete-event simulation of N vLLM replicas serving one base
model with many LoRA adapters, driving lorafleet's own policy code (``LoraFleetPolicy``,
``AffinityPolicy``, ``FrequencyEviction`` from ``lorafleet_runtime.router.policy``) against
baselines (random, round-robin, power of two choices, Ray Serve 2.60's multiplexed routing,
the llm-d/GIE lora-affinity scorer, NVIDIA Dynamo's HRW LoRA placement) and the upper bound
(Belady's MIN on one pooled cache of replicas x slots). Model, parameters and their sources:
docs/routing.md, section "Simulator".

    .venv/bin/python bench/routing.py --quick --json bench/out/routing.json
    .venv/bin/python bench/routing.py --plot docs/img/routing.png      # the full suite
    .venv/bin/python bench/routing.py --workload bench/workloads/zipf09.yaml
    .venv/bin/python bench/routing.py --micro
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import random
import sys
import time
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Protocol

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "runtime") not in sys.path:  # runnable without an installed package
    sys.path.insert(0, str(ROOT / "runtime"))

from lorafleet_runtime.router.policy import (  # noqa: E402
    AffinityPolicy,
    Decision,
    FrequencyEviction,
    LoraFleetPolicy,
    LoraFleetSettings,
    Reason,
    ReplicaState,
)

POLICIES: Final = (
    "random",
    "round-robin",
    "p2c",
    "ray",
    "gie",
    "dynamo",
    "affinity",
    "lorafleet",
)

# ------------------------------------------------------------------------------ workloads


@dataclass
class Workload:
    """One simulated scenario. The first block are the keys the issue fixes; the rest are this
    simulator's own (all optional in a workload file; defaults and sources: docs/routing.md)."""

    name: str
    seed: int = 1
    requests: int = 20_000
    adapters: int = 200
    zipf: float = 0.9
    hot_share: float = 0.0
    drift_every: int = 0
    arrival_cv: float = 1.0
    load: float = 0.7
    replicas: int = 8
    slots: int = 8
    scale_events: list[dict[str, float]] = field(default_factory=list)
    # --- the simulator's own keys
    cpu_slots: int = 0  # vLLM max_cpu_loras; 0 = slots (vLLM's default)
    stale_ms: float = 50.0
    max_ongoing: float = 1e9
    batch: int = 32
    prompt_min: int = 8
    prompt_max: int = 512
    output_min: int = 8
    output_max: int = 512
    d0_ms: float = 11.0
    d1_ms: float = 0.2
    lora_overhead: float = 0.1
    distinct_penalty: float = 0.1
    prefill_ms_per_token: float = 0.06
    gpu_swap_s: float = 0.02
    disk_load_s: float = 0.3
    remote_load_s: float = 2.0
    warmup: float = 0.1
    prewarm_disk: bool = True

    @property
    def host_slots(self) -> int:
        return self.cpu_slots or self.slots

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


WORKLOAD_KEYS: Final = tuple(f.name for f in fields(Workload))


class WorkloadError(ValueError):
    pass


def workload_from_mapping(data: Any, source: str = "workload") -> Workload:
    if not isinstance(data, dict):
        raise WorkloadError(f"{source}: expected a mapping of workload keys, got {type(data)}")
    unknown = sorted(set(data) - set(WORKLOAD_KEYS))
    if unknown:
        raise WorkloadError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys: {', '.join(WORKLOAD_KEYS)}"
        )
    if "name" not in data:
        raise WorkloadError(f"{source}: 'name' is required")
    kwargs: dict[str, Any] = {}
    for f in fields(Workload):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "name":
            value = str(value)
        elif f.name == "scale_events":
            value = _scale_events(value, source)
        else:
            default = getattr(Workload(name="x"), f.name)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise WorkloadError(f"{source}: {f.name} must be true or false")
            try:
                value = type(default)(value)
            except (TypeError, ValueError) as exc:
                raise WorkloadError(f"{source}: {f.name}: {exc}") from exc
        kwargs[f.name] = value
    wl = Workload(**kwargs)
    _check(wl, source)
    return wl


def _scale_events(value: Any, source: str) -> list[dict[str, float]]:
    if not isinstance(value, list):
        raise WorkloadError(f"{source}: scale_events must be a list of {{at, replicas}}")
    events = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"at", "replicas"}:
            raise WorkloadError(f"{source}: each scale event needs exactly 'at' and 'replicas'")
        at, n = float(item["at"]), int(item["replicas"])
        if not 0 < at < 1 or n < 1:
            raise WorkloadError(f"{source}: scale event at={at} replicas={n} out of range")
        events.append({"at": at, "replicas": n})
    return sorted(events, key=lambda e: e["at"])


def _check(wl: Workload, source: str) -> None:
    problems = []
    if wl.requests < 10:
        problems.append("requests must be >= 10")
    if wl.adapters < 1 or wl.replicas < 1 or wl.slots < 1 or wl.batch < 1:
        problems.append("adapters, replicas, slots and batch must be >= 1")
    if not 0 <= wl.hot_share < 1:
        problems.append("hot_share must be in [0, 1)")
    if wl.load <= 0 or wl.arrival_cv <= 0:
        problems.append("load and arrival_cv must be > 0")
    if wl.cpu_slots and wl.cpu_slots < wl.slots:
        problems.append("cpu_slots (max_cpu_loras) must be >= slots (vLLM's rule)")
    if problems:
        raise WorkloadError(f"{source}: " + "; ".join(problems))


def load_workload(path: Path) -> Workload:
    import yaml

    return workload_from_mapping(yaml.safe_load(path.read_text()), str(path))


def suite(quick: bool) -> list[Workload]:
    """The targets' workloads (docs/routing.md): 8 x 8 slots, 200 adapters, load 0.7."""
    n = 12_000 if quick else 40_000
    target = Workload(name="zipf0.9", requests=n)
    if quick:
        return [
            target,
            Workload(name="zipf0.6", zipf=0.6, requests=n // 2),
            Workload(name="hot40", hot_share=0.4, requests=n // 2),
        ]
    return [
        target,
        Workload(name="zipf0.6", zipf=0.6, requests=n),
        Workload(name="zipf1.2", zipf=1.2, requests=n),
        Workload(name="drift", drift_every=5_000, requests=n),
        Workload(name="hot40", hot_share=0.4, requests=n),
        Workload(name="scale-up", scale_events=[{"at": 0.5, "replicas": 12}], requests=n),
        Workload(name="scale-down", scale_events=[{"at": 0.5, "replicas": 6}], requests=n),
        # Not a target: the headline workload below saturation of the slot constraint.
        Workload(name="zipf0.9-load0.5", load=0.5, requests=n),
    ]


# ------------------------------------------------------------------------------ trace


@dataclass(slots=True)
class Trace:
    arrival: list[float]
    adapter: list[str]
    prompt: list[int]
    output: list[int]


def service_capacity(wl: Workload, replicas: int) -> float:
    """Saturated cluster throughput (req/s) of the service model with one adapter per batch
    (k = 1): a full batch of B decodes one token each per step of (d0 + d1 B)(1 + a), and each
    request's prefill stalls the replica for c_p x mean prompt."""
    step = (wl.d0_ms + wl.d1_ms * wl.batch) * (1 + wl.lora_overhead) / 1000
    mean_out = (wl.output_min + wl.output_max) / 2
    mean_prompt = (wl.prompt_min + wl.prompt_max) / 2
    per_request = step * (mean_out - 1) / wl.batch + wl.prefill_ms_per_token * mean_prompt / 1000
    return replicas / per_request


def make_trace(wl: Workload) -> Trace:
    """The request sequence every policy sees (common random numbers)."""
    rng = random.Random(wl.seed)
    names = [f"adapter-{i:05d}" for i in range(wl.adapters)]
    weights = [1 / (rank + 1) ** wl.zipf for rank in range(wl.adapters)]
    if wl.hot_share > 0 and wl.adapters > 1:
        rest = sum(weights[1:])
        weights = [wl.hot_share] + [(1 - wl.hot_share) * w / rest for w in weights[1:]]
    cum: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    ranking = names[:]
    rng.shuffle(ranking)  # rank -> adapter
    rate = wl.load * service_capacity(wl, wl.replicas)
    shape = 1 / wl.arrival_cv**2
    scale = 1 / (rate * shape)
    t = 0.0
    arrival, adapter, prompt, output = [], [], [], []
    for i in range(wl.requests):
        if wl.drift_every and i and i % wl.drift_every == 0:
            rng.shuffle(ranking)
        t += rng.gammavariate(shape, scale)
        arrival.append(t)
        adapter.append(ranking[min(bisect_right(cum, rng.random() * acc), wl.adapters - 1)])
        prompt.append(rng.randint(wl.prompt_min, wl.prompt_max))
        output.append(rng.randint(wl.output_min, wl.output_max))
    return Trace(arrival, adapter, prompt, output)


def belady_hit_rate(sequence: Sequence[str], capacity: int) -> float:
    """Belady's MIN on one cache of ``capacity`` equal-size entries (demand fetch, evict the
    entry used farthest in the future)."""
    n = len(sequence)
    never = n + 1
    next_use = [never] * n
    last: dict[str, int] = {}
    for i in range(n - 1, -1, -1):
        next_use[i] = last.get(sequence[i], never)
        last[sequence[i]] = i
    cached: dict[str, int] = {}  # adapter -> its next use
    heap: list[tuple[int, str]] = []  # (-next use, adapter), lazily invalidated
    hits = 0
    for i, a in enumerate(sequence):
        if a in cached:
            hits += 1
        elif len(cached) >= capacity:
            while True:
                neg, victim = heapq.heappop(heap)
                if cached.get(victim) == -neg:
                    del cached[victim]
                    break
        cached[a] = next_use[i]
        heapq.heappush(heap, (-next_use[i], a))
    return hits / n if n else 0.0


# ------------------------------------------------------------------------------ replicas


@dataclass(slots=True)
class Request:
    idx: int
    arrival: float
    adapter: str
    prompt: int
    output: int
    replica: Replica | None = None
    first_token: float = math.nan
    done: float = math.nan
    hit: bool = False
    resident: bool = False
    finish_v: float = 0.0


class Replica:
    """One vLLM engine with continuous batching (exact fluid model between events), K GPU
    slots, a host-memory cache (max_cpu_loras), a disk cache, and one adapter loader (Ray
    Serve's multiplex wrapper loads one model at a time per replica)."""

    def __init__(
        self, sim: Simulation, rid: str, frequency: bool, born: float, disk: Iterable[str] = ()
    ) -> None:
        self.sim = sim
        wl = sim.wl
        self.id = rid
        self.born = born
        self.retired = math.inf
        self.K = wl.slots
        self.C = wl.host_slots
        self.B = wl.batch
        self.gpu: OrderedDict[str, None] = OrderedDict()  # LRU order
        self.engine: OrderedDict[str, None] = OrderedDict()  # registered (host memory)
        self.disk: set[str] = set(disk)
        self.fetch_queue: deque[str] = deque()
        self.fetching: set[str] = set()  # queued or under way
        self.loader_busy = False
        self.waiting: list[Request] = []
        self.waiting_by_adapter: dict[str, int] = {}
        self.running = 0
        self.busy: dict[str, int] = {}  # adapter -> running requests
        self.heap: list[tuple[float, int, Request]] = []
        self.v = 0.0
        self.last = 0.0
        self.stall_until = 0.0
        self.version = 0
        self.routed = 0
        self.eviction = FrequencyEviction() if frequency else None
        self.disk_version = 0
        self._disk_frozen: frozenset[str] = frozenset()
        self._disk_frozen_version = -1

    # -- what the router sees --------------------------------------------------------
    @property
    def queue_len(self) -> int:
        return len(self.waiting) + self.running

    def loading(self) -> set[str]:
        return {a for a in self.waiting_by_adapter if a not in self.gpu}

    def disk_frozen(self) -> frozenset[str]:
        if self._disk_frozen_version != self.disk_version:
            self._disk_frozen = frozenset(self.disk)
            self._disk_frozen_version = self.disk_version
        return self._disk_frozen

    def state(self, now: float, max_ongoing: float) -> ReplicaState:
        gpu = frozenset(self.gpu)
        evict_value = 0.0
        if self.eviction is not None:
            evict_value = self.eviction.value(gpu, self.K, now)
        return ReplicaState(
            id=self.id,
            queue_len=float(self.queue_len),
            gpu=gpu,
            cpu=frozenset(a for a in self.engine if a not in self.gpu),
            disk=self.disk_frozen(),
            loading=frozenset(self.loading()),
            slots=self.K,
            max_ongoing=max_ongoing,
            evict_value=evict_value,
        )

    # -- the service model -----------------------------------------------------------
    def tau(self) -> float:
        wl = self.sim.wl
        k = len(self.busy)
        step = (wl.d0_ms + wl.d1_ms * self.running) / 1000
        if k >= 1:
            step *= 1 + wl.lora_overhead
            if self.K > 1:
                step *= 1 + wl.distinct_penalty * (k - 1) / (self.K - 1)
        return step

    def advance(self, now: float) -> None:
        if now <= self.last:
            return
        start = max(self.last, self.stall_until)
        if self.running and now > start:
            self.v += (now - start) / self.tau()
        self.last = now

    def schedule(self, now: float) -> None:
        self.version += 1
        if self.running:
            finish_v = self.heap[0][0]
            t = max(now, self.stall_until) + max(0.0, finish_v - self.v) * self.tau()
            self.sim.push(t, self._complete, self.version)

    def _complete(self, now: float, version: int) -> None:
        if version != self.version:
            return
        self.advance(now)
        sim = self.sim
        while self.heap and self.heap[0][0] <= self.v + 1e-9:
            _, _, req = heapq.heappop(self.heap)
            self.running -= 1
            left = self.busy[req.adapter] - 1
            if left:
                self.busy[req.adapter] = left
            else:
                del self.busy[req.adapter]
            req.done = now
            sim.completed += 1
            sim.last_done = now
        self.admit(now)
        self.schedule(now)

    # -- requests --------------------------------------------------------------------
    def receive(self, req: Request, now: float) -> None:
        req.replica = self
        req.hit = req.adapter in self.gpu
        req.resident = req.adapter in self.engine  # GPU slot or host memory
        self.routed += 1
        if self.eviction is not None:
            self.eviction.record(req.adapter, now)
        self.waiting.append(req)
        self.waiting_by_adapter[req.adapter] = self.waiting_by_adapter.get(req.adapter, 0) + 1
        self.advance(now)
        self.admit(now)
        self.schedule(now)

    def _victim(self, candidates: Iterable[str], now: float) -> str | None:
        if self.eviction is not None:
            pool = list(candidates)
            victim = self.eviction.victim(pool, now, busy=self.busy.keys())
            return None if victim is None or victim in self.busy else victim
        for a in candidates:  # least recently used first
            if a not in self.busy:
                return a
        return None

    def admit(self, now: float) -> None:
        """vLLM's scheduler: FIFO over the waiting queue; a request whose adapter is not in a
        GPU slot starts only once a slot can take it (free, or its adapter has no running
        request); one that cannot start is skipped (later ones may)."""
        if not self.waiting or self.running >= self.B:
            return
        wl = self.sim.wl
        kept: list[Request] = []
        scanned = 0
        waiting = self.waiting
        for pos, req in enumerate(waiting):
            if self.running >= self.B or scanned >= 256:
                kept.extend(waiting[pos:])
                break
            scanned += 1
            a = req.adapter
            if a in self.gpu:
                self.gpu.move_to_end(a)
            elif a in self.engine:
                if len(self.gpu) >= self.K:
                    victim = self._victim(self.gpu, now)
                    if victim is None:
                        kept.append(req)
                        continue
                    del self.gpu[victim]
                self.gpu[a] = None
                # The host-to-GPU copy runs inside the engine step: it stalls the batch.
                self.stall_until = max(now, self.stall_until) + wl.gpu_swap_s
            else:
                if a not in self.fetching:
                    self._request_fetch(a, now)
                kept.append(req)
                continue
            self.engine.move_to_end(a)
            self._start(req, now)
        self.waiting = kept

    def _start(self, req: Request, now: float) -> None:
        wl = self.sim.wl
        a = req.adapter
        left = self.waiting_by_adapter[a] - 1
        if left:
            self.waiting_by_adapter[a] = left
        else:
            del self.waiting_by_adapter[a]
        self.running += 1
        self.busy[a] = self.busy.get(a, 0) + 1
        # Prefill stalls decoding (no chunked prefill): the first token comes after it.
        self.stall_until = max(now, self.stall_until) + wl.prefill_ms_per_token * req.prompt / 1000
        req.first_token = self.stall_until
        self.sim.seq += 1
        heapq.heappush(self.heap, (self.v + max(0, req.output - 1), self.sim.seq, req))

    # -- adapter loads -----------------------------------------------------------------
    def _request_fetch(self, adapter: str, now: float) -> None:
        """Make ``adapter`` usable: download it if the disk cache lacks it (downloads run in
        parallel), then register it in the engine (one registration at a time per replica:
        Ray Serve's multiplex wrapper holds a lock around each load)."""
        self.fetching.add(adapter)
        if adapter in self.disk:
            self.sim.disk_loads += 1
            self._downloaded(now, adapter)
        else:
            self.sim.remote_loads += 1
            self.sim.push(now + self.sim.wl.remote_load_s, self._downloaded, adapter)

    def _downloaded(self, now: float, adapter: str) -> None:
        if adapter not in self.disk:
            self.disk.add(adapter)
            self.disk_version += 1
        self.fetch_queue.append(adapter)
        if not self.loader_busy:
            self._next_fetch(now)

    def _next_fetch(self, now: float) -> None:
        if not self.fetch_queue:
            self.loader_busy = False
            return
        self.loader_busy = True
        adapter = self.fetch_queue.popleft()
        self.sim.push(now + self.sim.wl.disk_load_s, self._fetched, adapter)

    def _fetched(self, now: float, adapter: str) -> None:
        self.advance(now)
        # Host memory (max_cpu_loras, = Ray Serve's multiplex LRU) is LRU (or lorafleet's
        # frequency order), trimmed back to its size at each registration. An adapter that
        # requests use (running, or waiting in the engine) is not removed under them:
        # lorafleet's runtime drains such requests first. With every entry so used the cache
        # runs over for a while (where the runtime would hold the registration until a drain)
        # and shrinks back at the next registrations.
        pinned = self.waiting_by_adapter
        while len(self.engine) >= self.C:
            victim = self._victim(
                (a for a in self.engine if a not in self.busy and a not in pinned), now
            )
            if victim is None:
                break
            del self.engine[victim]
            self.gpu.pop(victim, None)
        self.fetching.discard(adapter)
        self.engine[adapter] = None
        self._next_fetch(now)
        self.admit(now)
        self.schedule(now)


# ------------------------------------------------------------------------------ routers


class Router(Protocol):
    name: str

    def route(self, sim: Simulation, req: Request, now: float) -> Replica | float: ...


class View:
    """The router's picture of the replicas: refreshed every ``stale_ms`` (0: at every
    decision), plus the requests this router itself sent since (as Ray Serve's router counts
    its own sends)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.period = sim.wl.stale_ms / 1000
        self.stamp = -math.inf
        self.states: list[ReplicaState] = []
        self.by_id: dict[str, ReplicaState] = {}
        self.extra: dict[str, dict[str, Any]] = {}
        self.members = 0

    def refresh(self, now: float) -> list[ReplicaState]:
        sim = self.sim
        if now - self.stamp >= self.period or self.members != sim.membership:
            self.stamp = now
            self.members = sim.membership
            self.states = [r.state(now, sim.wl.max_ongoing) for r in sim.active]
            self.by_id = {s.id: s for s in self.states}
            self.extra = {
                r.id: {
                    "waiting": len(r.waiting),
                    "running": r.running,
                    "active": set(r.busy),
                    "waiting_models": set(r.waiting_by_adapter),
                }
                for r in sim.active
            }
        return self.states

    def sent(self, rid: str) -> None:
        state = self.by_id.get(rid)
        if state is not None:
            state.queue_len += 1
            self.extra[rid]["waiting"] += 1


def serve_pick(decision: Decision, view: View) -> str:
    """How Ray Serve applies ranked tiers: the least-loaded replica of the first tier that has
    one below its max_ongoing_requests."""
    for tier in decision.ranked:
        best: ReplicaState | None = None
        for rid in tier:
            s = view.by_id.get(rid)
            if s is None or s.queue_len >= s.max_ongoing:
                continue
            if best is None or s.queue_len < best.queue_len:
                best = s
        if best is not None:
            return best.id
    # Nothing accepts: the policy's first choice anyway (Serve would back off and ask the
    # policy again; the simulator asks every policy exactly once per request).
    first = decision.first
    assert first is not None
    return first


class PolicyRouter:
    """A policy object with ``choose(adapter, states, now) -> Decision`` under Serve's rule."""

    def __init__(self, name: str, policy: Any) -> None:
        self.name = name
        self.policy = policy

    def route(self, sim: Simulation, req: Request, now: float) -> Replica | float:
        view = sim.view
        states = view.refresh(now)
        decision = self.policy.choose(req.adapter, states, now)
        rid = serve_pick(decision, view)
        view.sent(rid)
        return sim.by_id[rid]


def _single(rid: str) -> Decision:
    return Decision(((rid,),), None, Reason.FALLBACK)


class RandomPolicy:
    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choose(self, adapter: str | None, replicas: Sequence[ReplicaState], now: float) -> Decision:
        return _single(self.rng.choice(replicas).id)


class RoundRobinPolicy:
    name = "round-robin"

    def __init__(self) -> None:
        self.i = 0

    def choose(self, adapter: str | None, replicas: Sequence[ReplicaState], now: float) -> Decision:
        self.i += 1
        return _single(replicas[self.i % len(replicas)].id)


class P2CPolicy:
    name = "p2c"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choose(self, adapter: str | None, replicas: Sequence[ReplicaState], now: float) -> Decision:
        if len(replicas) == 1:
            return _single(replicas[0].id)
        a, b = self.rng.sample(list(replicas), 2)
        return _single((a if a.queue_len <= b.queue_len else b).id)


class GiePolicy:
    """llm-d router / GIE EPP default profile with KServe's weights: lora-affinity-scorer x 4
    (1.0 adapter active, 0.8 spare slot, 0.6 waiting, 0 else, over vLLM's
    ``vllm:lora_requests_info``: running and waiting adapters only), queue-scorer x 2
    (min-max normalised waiting queue) and kv-cache-utilization-scorer x 2 (1 - usage; usage
    modelled as running / max batch); the highest total wins, ties at random."""

    name = "gie"

    def __init__(self, view: View, slots: int, batch: int, seed: int) -> None:
        self.view = view
        self.slots = slots
        self.batch = batch
        self.rng = random.Random(seed)

    def choose(self, adapter: str | None, replicas: Sequence[ReplicaState], now: float) -> Decision:
        extra = self.view.extra
        queues = [extra[r.id]["waiting"] for r in replicas]
        lo, hi = min(queues), max(queues)
        best: list[str] = []
        best_score = -math.inf
        for r, q in zip(replicas, queues, strict=True):
            e = extra[r.id]
            active, waiting = e["active"], e["waiting_models"]
            if adapter in active:
                lora = 1.0
            elif len(active) + len(waiting) < self.slots:
                lora = 0.8
            elif adapter in waiting:
                lora = 0.6
            else:
                lora = 0.0
            queue = 1.0 if hi == lo else (hi - q) / (hi - lo)
            kv = 1.0 - min(1.0, e["running"] / self.batch)
            score = 4 * lora + 2 * queue + 2 * kv
            if score > best_score + 1e-12:
                best_score, best = score, [r.id]
            elif abs(score - best_score) <= 1e-12:
                best.append(r.id)
        return _single(self.rng.choice(best))


def _hrw(adapter: str, worker: str) -> int:
    digest = hashlib.blake2b(f"{adapter}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class DynamoPolicy:
    """NVIDIA Dynamo's LoRA allocation (lib/llm/src/lora/, modelled, not copied; commits in
    docs/routing.md): every ``timestep`` s a controller turns per-adapter arrivals in a sliding
    window (EMA-smoothed) into replica counts proportional to load share x total slots (top
    ``total slots`` adapters only), places them by sticky, slot-aware rendezvous hashing, pins
    idle adapters to one HRW home, defers scale-down by a cooldown; a request goes to the
    adapter's replica set (loaded members first), round-robin among them."""

    name = "dynamo"

    def __init__(
        self,
        sim: Simulation,
        *,
        timestep: float = 3.0,
        window: float = 90.0,
        ema_alpha: float = 0.3,
        cooldown_ticks: int = 3,
    ) -> None:
        self.sim = sim
        self.timestep = timestep
        self.window = window
        self.alpha = ema_alpha
        self.cooldown = cooldown_ticks
        self.next_tick = timestep
        self.tick = 0
        self.arrivals: dict[str, deque[float]] = {}
        self.ema: dict[str, float] = {}
        # adapter -> (replica set, is_active)
        self.table: dict[str, tuple[list[str], bool]] = {}
        self.last_scale_down: dict[str, int] = {}
        self.rr = 0
        self._rank_cache: dict[tuple[str, frozenset[str]], list[str]] = {}

    def _ranked(self, adapter: str, workers: Sequence[str]) -> list[str]:
        key = (adapter, frozenset(workers))
        cached = self._rank_cache.get(key)
        if cached is None:
            cached = sorted(workers, key=lambda w: (-_hrw(adapter, w), w))
            if len(self._rank_cache) > 50_000:
                self._rank_cache.clear()
            self._rank_cache[key] = cached
        return cached

    def _recompute(self, now: float, replicas: Sequence[ReplicaState]) -> None:
        self.tick += 1
        workers = sorted(r.id for r in replicas)
        loaded: dict[str, set[str]] = {}
        usage: dict[str, list[int]] = {}
        for r in replicas:
            usage[r.id] = [len(r.gpu), r.slots]
            for a in r.gpu:
                loaded.setdefault(a, set()).add(r.id)
        total_slots = sum(r.slots for r in replicas)
        loads: dict[str, int] = {}
        for a, times in self.arrivals.items():
            while times and times[0] <= now - self.window:
                times.popleft()
            count = len(times)
            prev = self.ema.get(a)
            ema = count if prev is None else self.alpha * count + (1 - self.alpha) * prev
            self.ema[a] = ema
            if round(ema) > 0:
                loads[a] = round(ema)
        known = sorted(set(loaded) | set(loads) | set(self.table))
        counts = self._replica_counts(loads, total_slots, len(workers))
        residual = {w: list(u) for w, u in usage.items()}
        for a in sorted(counts):
            prior = self.table.get(a, ([], True))[0]
            current = len(prior)
            want = counts[a]
            if want < current:
                last = self.last_scale_down.get(a)
                if last is None:
                    self.last_scale_down[a] = self.tick
                    want = current
                elif self.tick - last < self.cooldown:
                    want = current
                else:
                    self.last_scale_down[a] = self.tick
            else:
                self.last_scale_down.pop(a, None)
            own = loaded.get(a, set())
            eff = {w: [u[0] - (1 if w in own else 0), u[1]] for w, u in residual.items()}
            chosen = self._sticky(a, workers, want, eff, prior)
            for w in chosen:
                if w not in own and w in residual:
                    residual[w][0] += 1
            self.table[a] = (chosen, True)
        # Active adapters beyond the slot budget: still-warm prior homes, else one slot-aware pin.
        projected: dict[str, int] = {}
        for a, (homes, _) in self.table.items():
            if a in counts:
                for w in homes:
                    projected[w] = projected.get(w, 0) + 1
        for a in sorted(set(loads) - set(counts)):
            prior = self.table.get(a, ([], True))[0]
            warm = [w for w in prior if w in loaded.get(a, set()) and w in usage]
            if not warm:
                proj = {w: [projected.get(w, 0), usage[w][1]] for w in workers}
                warm = self._slot_aware(a, workers, 1, proj)
            for w in warm:
                projected[w] = projected.get(w, 0) + 1
            self.table[a] = (warm, True)
        for a in known:
            if a not in loads:
                self.table[a] = (self._ranked(a, workers)[:1], False)
                self.last_scale_down.pop(a, None)
        for a in [a for a in self.table if a not in known]:
            del self.table[a]

    @staticmethod
    def _replica_counts(loads: dict[str, int], total_slots: int, n: int) -> dict[str, int]:
        if not loads or total_slots == 0:
            return {}
        ranked = sorted(loads.items(), key=lambda kv: (-kv[1], kv[0]))[:total_slots]
        total = sum(v for _, v in ranked)
        raw = {a: min(float(n), max(1.0, math.ceil(v / total * total_slots))) for a, v in ranked}
        s = sum(raw.values())
        if s <= total_slots:
            return {a: max(1, min(n, int(c))) for a, c in raw.items()}
        scale = total_slots / s
        scaled = {a: max(1.0, c * scale) for a, c in raw.items()}
        floored = [(a, max(1, math.floor(c)), c - max(1, math.floor(c))) for a, c in scaled.items()]
        leftover = max(0, total_slots - sum(f for _, f, _ in floored))
        floored.sort(key=lambda x: (-x[2], x[0]))
        out = {}
        for a, f, _ in floored:
            if leftover and f < n:
                f += 1
                leftover -= 1
            out[a] = max(1, min(n, f))
        return out

    def _slot_aware(
        self, a: str, workers: Sequence[str], k: int, usage: dict[str, list[int]]
    ) -> list[str]:
        ranked = self._ranked(a, workers)
        out = [w for w in ranked if usage[w][0] < usage[w][1]][:k]
        return out or ranked[:k]

    def _sticky(
        self, a: str, workers: Sequence[str], k: int, usage: dict[str, list[int]], prior: list[str]
    ) -> list[str]:
        ranked = self._ranked(a, workers)
        full = {w for w in workers if usage[w][0] >= usage[w][1]}
        prior_set = set(prior)
        out = [w for w in ranked if w in prior_set and w not in full][:k]
        for w in ranked:
            if len(out) >= k:
                break
            if w not in out and w not in full:
                out.append(w)
        return out or ranked[:k]

    def choose(self, adapter: str | None, replicas: Sequence[ReplicaState], now: float) -> Decision:
        while now >= self.next_tick:
            self._recompute(self.next_tick, replicas)
            self.next_tick += self.timestep
        ids = [r.id for r in replicas]
        if adapter is None:
            return _single(ids[self.rr % len(ids)])
        self.arrivals.setdefault(adapter, deque()).append(now)
        live = set(ids)
        loaded = [r.id for r in replicas if adapter in r.gpu]
        entry = self.table.get(adapter)
        if entry is None:
            candidates = loaded or ids
        else:
            homes, active = entry
            homes = [w for w in homes if w in live]
            warm = [w for w in homes if w in loaded]
            candidates = (warm or homes) if active else homes[:1]
            if not candidates:  # bounded fallback: loaded workers, else one HRW pin
                candidates = loaded or self._ranked(adapter, ids)[:1]
        self.rr += 1
        return _single(candidates[self.rr % len(candidates)])


class RayServeRouter:
    """Ray Serve 2.60's PowerOfTwoChoicesRequestRouter with MultiplexMixin (modelled from
    ray/serve/_private/request_router/request_router.py and pow_2_router.py):

    - within a matching window drawn from U[T, 2T] (T = 1 s) of the request's first attempt:
      the replicas advertising the model id; if none does and the id is not in the
      fallback-match set, the replicas with the fewest models (and the id enters the set);
      an id already in the set gets no candidates on that attempt; any later attempt goes to
      the fewest-models replicas;
    - after the window: the fewest-models replicas once, then all replicas;
    - two random candidates, the one with the lower queue length below max_ongoing_requests
      (Ray Serve LLM: 1e9, so always) wins;
    - an empty attempt backs off (no sleep the first time, then 0.025 s x 2^n up to 0.5 s).
    Advertised ids are the replica's loaded and loading models (multiplex.py)."""

    name = "ray"

    def __init__(self, seed: int, matching_timeout: float = 1.0) -> None:
        self.rng = random.Random(seed)
        self.T = matching_timeout
        self.fallback: set[str] = set()
        self.ctx: dict[int, dict[str, Any]] = {}

    def route(self, sim: Simulation, req: Request, now: float) -> Replica | float:
        view = sim.view
        states = view.refresh(now)
        ctx = self.ctx.get(req.idx)
        if ctx is None:
            ctx = {
                "start": now,
                "first": False,
                "fewest": False,
                "attempt": 0,
                "entered": False,
            }
            self.ctx[req.idx] = ctx
        while True:
            cands = self._candidates(req.adapter, states, ctx, now)
            if cands:
                if len(cands) >= 2:
                    a, b = self.rng.sample(cands, 2)
                    two = [a, b]
                else:
                    two = cands
                pick = None
                for s in two:
                    if s.queue_len < s.max_ongoing and (
                        pick is None or s.queue_len < pick.queue_len
                    ):
                        pick = s
                if pick is not None:
                    del self.ctx[req.idx]
                    view.sent(pick.id)
                    return sim.by_id[pick.id]
            if not ctx["entered"]:
                ctx["entered"] = True
                continue
            attempt: int = ctx["attempt"]
            ctx["attempt"] = attempt + 1
            return now + min(0.025 * 2.0**attempt, 0.5)

    def _candidates(
        self, model: str, states: list[ReplicaState], ctx: dict[str, Any], now: float
    ) -> list[ReplicaState]:
        window = self.rng.uniform(self.T, 2 * self.T)
        if now - ctx["start"] < window:
            holders = [s for s in states if model in s.gpu or model in s.loading]
            if (not holders and model not in self.fallback) or ctx["first"]:
                cands = self._fewest(states)
                self.fallback.add(model)
            else:
                if holders:
                    self.fallback.discard(model)
                cands = holders
            ctx["first"] = True
            return cands
        if not ctx["fewest"]:
            ctx["fewest"] = True
            return self._fewest(states)
        return list(states)

    @staticmethod
    def _fewest(states: list[ReplicaState]) -> list[ReplicaState]:
        def count(s: ReplicaState) -> int:
            return len(s.gpu | s.loading)

        low = min(count(s) for s in states)
        return [s for s in states if count(s) == low]


# ------------------------------------------------------------------------------ simulation


class Simulation:
    def __init__(
        self,
        wl: Workload,
        trace: Trace,
        policy: str,
        settings: LoraFleetSettings | None = None,
    ) -> None:
        self.wl = wl
        self.trace = trace
        self.policy_name = policy
        self.events: list[tuple[float, int, Callable[[float, Any], None], Any]] = []
        self.seq = 0
        self.completed = 0
        self.last_done = 0.0
        self.disk_loads = 0
        self.remote_loads = 0
        self.membership = 0
        self.frequency = policy == "lorafleet"
        self.active: list[Replica] = []
        self.all: list[Replica] = []
        self.by_id: dict[str, Replica] = {}
        # A fleet that has run a while holds every adapter on disk (Ray Serve LLM's disk
        # cache is never evicted); a replica added later starts empty.
        initial = sorted(set(trace.adapter)) if wl.prewarm_disk else []
        for _ in range(wl.replicas):
            self._add_replica(0.0, initial)
        self.view = View(self)
        seed = wl.seed * 7919 + POLICIES.index(policy)
        router: Any
        if policy == "ray":
            router = RayServeRouter(seed)
        elif policy == "lorafleet":
            router = PolicyRouter(policy, LoraFleetPolicy(settings or LoraFleetSettings()))
        elif policy == "affinity":
            router = PolicyRouter(policy, AffinityPolicy(seed=seed))
        elif policy == "random":
            router = PolicyRouter(policy, RandomPolicy(seed))
        elif policy == "round-robin":
            router = PolicyRouter(policy, RoundRobinPolicy())
        elif policy == "p2c":
            router = PolicyRouter(policy, P2CPolicy(seed))
        elif policy == "gie":
            router = PolicyRouter(policy, GiePolicy(self.view, wl.slots, wl.batch, seed))
        elif policy == "dynamo":
            router = PolicyRouter(policy, DynamoPolicy(self))
        else:
            raise ValueError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.router: Router = router

    def _add_replica(self, now: float, disk: Iterable[str] = ()) -> None:
        rid = f"replica-{len(self.all):02d}"
        replica = Replica(self, rid, self.frequency, now, disk)
        self.all.append(replica)
        self.active.append(replica)
        self.by_id[rid] = replica
        self.membership += 1

    def scale(self, n: int, now: float) -> None:
        while len(self.active) < n:
            self._add_replica(now)
        while len(self.active) > n:
            gone = self.active.pop()
            gone.retired = now  # drains what it has; gets nothing new
            self.membership += 1

    def push(self, t: float, fn: Callable[[float, Any], None], arg: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, fn, arg))

    def _arrive(self, now: float, req: Request) -> None:
        target = self.router.route(self, req, now)
        if isinstance(target, float):
            self.push(target, self._arrive, req)
            return
        target.receive(req, now)

    def run(self) -> dict[str, float]:
        wl, tr = self.wl, self.trace
        n = len(tr.arrival)
        scale_at = {max(1, int(e["at"] * n)): int(e["replicas"]) for e in wl.scale_events}
        requests = [
            Request(i, tr.arrival[i], tr.adapter[i], tr.prompt[i], tr.output[i]) for i in range(n)
        ]
        events = self.events
        i = 0
        while i < n or events:
            if i < n and (not events or tr.arrival[i] <= events[0][0]):
                now = tr.arrival[i]
                if i in scale_at:
                    self.scale(scale_at[i], now)
                self._arrive(now, requests[i])
                i += 1
            else:
                t, _, fn, arg = heapq.heappop(events)
                fn(t, arg)
        return self._metrics(requests)

    def _metrics(self, requests: list[Request]) -> dict[str, float]:
        n = len(requests)
        skip = int(self.wl.warmup * n)
        ttft = sorted(r.first_token - r.arrival for r in requests[skip:])
        end = self.trace.arrival[-1]
        rates, lifetimes = [], []
        for r in self.all:
            life = min(r.retired, end) - r.born
            if life > 0:
                rates.append(r.routed / life)
                lifetimes.append(life)
        mean_rate = sum(r.routed for r in self.all) / sum(lifetimes)
        makespan = self.last_done - requests[0].arrival
        hits = sum(r.hit for r in requests)
        return {
            "hit_rate": hits / n,
            "cold_loads_per_1000": 1000 * (self.disk_loads + self.remote_loads) / n,
            "ttft_p50_ms": 1000 * _pct(ttft, 0.50),
            "ttft_p99_ms": 1000 * _pct(ttft, 0.99),
            "throughput_rps": self.completed / makespan,
            "imbalance": max(rates) / mean_rate,
            "remote_loads_per_1000": 1000 * self.remote_loads / n,
            "resident_hit_rate": sum(r.resident for r in requests) / n,
        }


def _pct(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def run_workload(
    wl: Workload,
    policies: Iterable[str] = POLICIES,
    settings: LoraFleetSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    trace = make_trace(wl)
    peak = max([wl.replicas] + [int(e["replicas"]) for e in wl.scale_events])
    result: dict[str, Any] = {
        "name": wl.name,
        "params": wl.params(),
        "belady_hit_rate": belady_hit_rate(trace.adapter, peak * wl.slots),
        "policies": {},
    }
    for name in policies:
        t0 = time.perf_counter()
        result["policies"][name] = Simulation(wl, trace, name, settings).run()
        if log is not None:
            log(f"  {wl.name:<12} {name:<12} {time.perf_counter() - t0:6.1f} s")
    return result


# ------------------------------------------------------------------------------ output

COLUMNS: Final = (
    ("hit_rate", "hit", "{:.3f}"),
    ("hit/belady", "hit/MIN", "{:.2f}"),
    ("resident_hit_rate", "gpu+host", "{:.3f}"),
    ("cold_loads_per_1000", "cold/1k", "{:.1f}"),
    ("ttft_p50_ms", "p50 ms", "{:.0f}"),
    ("ttft_p99_ms", "p99 ms", "{:.0f}"),
    ("throughput_rps", "req/s", "{:.1f}"),
    ("imbalance", "imbal", "{:.2f}"),
)


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        p = res["params"]
        lines.append(
            f"\n## {res['name']}: {p['replicas']} replicas x {p['slots']} slots, "
            f"{p['adapters']} adapters, zipf {p['zipf']}, load {p['load']}, "
            f"{p['requests']} requests; Belady hit rate {res['belady_hit_rate']:.3f}"
        )
        lines.append("")
        lines.append("| policy | " + " | ".join(c[1] for c in COLUMNS) + " |")
        lines.append("| --- |" + " ---: |" * len(COLUMNS))
        for name, m in res["policies"].items():
            row = dict(m)
            row.setdefault("resident_hit_rate", math.nan)
            row["hit/belady"] = m["hit_rate"] / res["belady_hit_rate"]
            lines.append(
                f"| {name} | " + " | ".join(fmt.format(row[k]) for k, _, fmt in COLUMNS) + " |"
            )
    return "\n".join(lines)


_Panel = tuple[str, Callable[[dict[str, Any], dict[str, Any]], float], bool]


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results[0]["policies"])
    panels: tuple[_Panel, ...] = (
        ("hit rate / Belady", lambda r, m: m["hit_rate"] / r["belady_hit_rate"], False),
        ("cold loads per 1000 requests", lambda r, m: m["cold_loads_per_1000"], False),
        ("p99 TTFT (ms, log)", lambda r, m: m["ttft_p99_ms"], True),
        ("imbalance (max/mean requests)", lambda r, m: m["imbalance"], False),
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.2 * len(panels)), sharex=True)
    width = 0.8 / len(names)
    for ax, (title, value, log_scale) in zip(axes, panels, strict=True):
        for j, name in enumerate(names):
            xs = [i + (j - len(names) / 2 + 0.5) * width for i in range(len(results))]
            ys = [value(r, r["policies"][name]) for r in results]
            ax.bar(xs, ys, width, label=name)
        ax.set_title(title, fontsize=10)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(results)), [r["name"] for r in results])
    axes[0].legend(ncol=len(names), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.12))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ micro


def micro(samples: int = 20_000, replicas: int = 64, adapters: int = 10_000) -> dict[str, Any]:
    """Decision cost of the two policies with ``replicas`` replicas and ``adapters`` adapters
    the policy already knows (demand recorded, rendezvous order cached)."""
    rng = random.Random(7)
    names = [f"adapter-{i:05d}" for i in range(adapters)]
    states = []
    for i in range(replicas):
        picks = rng.sample(names, 16 + 500)
        states.append(
            ReplicaState(
                id=f"replica-{i:02d}",
                queue_len=float(rng.randint(0, 40)),
                gpu=frozenset(picks[:8]),
                cpu=frozenset(picks[8:16]),
                disk=frozenset(picks[16:]),
                loading=frozenset(),
                slots=8,
                max_ongoing=1e9,
                evict_value=rng.random() * 5,
            )
        )
    weights = [1 / (r + 1) ** 0.9 for r in range(adapters)]
    stream = rng.choices(names, weights=weights, k=samples)
    out: dict[str, Any] = {"replicas": replicas, "adapters": adapters, "samples": samples}
    for label, policy in (
        ("lorafleet", LoraFleetPolicy()),
        ("affinity", AffinityPolicy(seed=1)),
    ):
        now = 0.0
        for a in names:  # every adapter known
            now += 0.001
            policy.choose(a, states, now)
        timings = []
        clock = time.perf_counter_ns
        for a in stream:
            now += 0.001
            t0 = clock()
            policy.choose(a, states, now)
            timings.append(clock() - t0)
        timings.sort()
        out[label] = {
            "p50_us": _pct(timings, 0.5) / 1000,
            "p99_us": _pct(timings, 0.99) / 1000,
            "mean_us": sum(timings) / len(timings) / 1000,
        }
    return out


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short suite (<= 90 s)")
    parser.add_argument("--workload", type=Path, action="append", help="a workload YAML file")
    parser.add_argument("--policies", help="comma-separated subset of " + ",".join(POLICIES))
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here (needs matplotlib)")
    parser.add_argument("--micro", action="store_true", help="decision-cost micro-benchmark")
    args = parser.parse_args(argv)

    if args.micro:
        res = micro()
        print(
            f"decision cost, {res['replicas']} replicas, {res['adapters']} known adapters, "
            f"{res['samples']} decisions:"
        )
        for label in ("lorafleet", "affinity"):
            m = res[label]
            print(
                f"  {label:<10} p50 {m['p50_us']:6.1f} us  p99 {m['p99_us']:6.1f} us  "
                f"mean {m['mean_us']:6.1f} us"
            )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"micro": res}, indent=2) + "\n")
        return 0

    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("--plot needs matplotlib (pip install -e '.[dev]')", file=sys.stderr)
            return 2

    try:
        workloads = (
            [load_workload(p) for p in args.workload] if args.workload else suite(args.quick)
        )
    except WorkloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    policies = args.policies.split(",") if args.policies else list(POLICIES)
    for p in policies:
        if p not in POLICIES:
            print(f"error: unknown policy {p!r}; expected {', '.join(POLICIES)}", file=sys.stderr)
            return 2

    t0 = time.perf_counter()
    results = []
    for wl in workloads:
        results.append(
            run_workload(wl, policies, log=lambda line: print(line, file=sys.stderr, flush=True))
        )
    elapsed = time.perf_counter() - t0
    print(table(results))
    print(f"\n({elapsed:.1f} s wall)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"workloads": results}, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    elif not _has_matplotlib():
        print("(matplotlib not installed: no plot; --plot needs it)", file=sys.stderr)
    return 0


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
