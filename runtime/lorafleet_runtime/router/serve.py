"""lorafleet's Ray Serve request router: a ``ray.serve.request_router.RequestRouter`` over the
pure policies in ``policy.py``, selected by ``LoRAModel.spec.router.policy`` through the LLM
deployment's ``request_router_config`` (``ray`` keeps Ray Serve's own router).

It runs inside each caller of the LLM deployment (the ingress replicas). What it sees:

- Serve's replica list (``update_replicas``: replicas that die or are added change the
  candidates the next decision gets);
- each replica's ``multiplexed_model_ids`` (adapters loaded or loading, pushed every 0.1 s)
  and its residency report (``routing_stats``, every ``ROUTING_STATS_PERIOD_S``);
- the requests it sent and that completed (its own count of requests in flight per replica).

It returns the policy's ranked tiers; Serve sends the request to the first tier's replica (or
the next tier if that one cannot take it)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any, Final

from ray.serve.request_router import (
    FIFOMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from lorafleet_runtime.metrics import RouterMetrics
from lorafleet_runtime.router.policy import Decision, Policy, ReplicaState, Tier, make_policy
from lorafleet_runtime.router.residency import adapter_of, replica_state

log = logging.getLogger("lorafleet.router")

# Requests whose decision is remembered, so Serve's retries of one request (backoff after a
# replica could not take it) do not count as new demand.
MAX_REMEMBERED: Final = 4096
# A decision whose send never happened (cancelled) stops counting after this long.
ROUTED_TTL_S: Final = 5.0


class LoraFleetRequestRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    def initialize_state(  # type: ignore[override]
        self,
        *,
        policy: str = "lorafleet",
        base_model_id: str,
        load_bound_factor: float | None = None,
        max_replicas_per_adapter: int | None = None,
        **_: Any,
    ) -> None:
        self._policy_name = policy
        self._policy: Policy = make_policy(
            policy,
            load_bound_factor=load_bound_factor,
            max_replicas_per_adapter=max_replicas_per_adapter,
        )
        self._base_model_id = base_model_id
        self._in_flight: dict[str, int] = {}
        self._decided: OrderedDict[str, tuple[Decision, str | None]] = OrderedDict()
        self._states: dict[str, tuple[Any, Any, ReplicaState]] = {}
        self._ran_on: dict[str, set[str]] = {}
        # replica -> when this router decided to send it a request Serve has not sent yet
        self._routed: dict[str, deque[float]] = {}
        self._metrics: RouterMetrics | None = None
        try:
            self._metrics = RouterMetrics()
        except Exception as err:  # noqa: BLE001 - metrics must never stop routing
            log.warning("Router metrics unavailable: %s", err)

    # ----------------------------------------------------------------- bookkeeping
    @staticmethod
    def _key(replica_id: ReplicaID) -> str:
        return str(replica_id.unique_id)

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        key = self._key(replica_id)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        # The send a decision announced has happened: it now counts as in flight.
        routed = self._routed.get(key)
        if routed:
            routed.popleft()

    def _queue_len(self, key: str, now: float) -> int:
        """Requests in flight on ``key``, plus the ones this router decided to send there and
        Serve has not sent yet (a burst is decided faster than it is sent; without these, a
        whole burst would see the same idle replica). Decisions whose send never came (the
        request was cancelled) stop counting after ``ROUTED_TTL_S``."""
        routed = self._routed.get(key)
        while routed and now - routed[0] > ROUTED_TTL_S:
            routed.popleft()
        return self._in_flight.get(key, 0) + (len(routed) if routed else 0)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        key = self._key(replica_id)
        decided = self._decided.pop(internal_request_id, None)
        if decided is not None and decided[1] is not None:
            self._ran(key, decided[1])
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        key = self._key(replica_id)
        self._in_flight.pop(key, None)
        self._routed.pop(key, None)
        self._states.pop(key, None)
        self._ran_on.pop(key, None)

    def _ran(self, key: str, adapter: str) -> None:
        """A request for ``adapter`` finished on replica ``key``: while Serve still lists
        the adapter there and the residency report (which lags) does not place it, the
        router counts it as resident, not as a load under way."""
        self._ran_on.setdefault(key, set()).add(adapter)
        cached = self._states.get(key)
        if cached is not None and adapter in cached[2].loading:
            self._states[key] = (cached[0], cached[1], self._promoted(cached[2], {adapter}))

    @staticmethod
    def _promoted(state: ReplicaState, adapters: set[str]) -> ReplicaState:
        return replace(state, gpu=state.gpu | adapters, loading=state.loading - adapters)

    # ----------------------------------------------------------------- the decision
    def states(self, replicas: list[RunningReplica], now: float) -> list[ReplicaState]:
        """The policy's view of ``replicas``: residency parsed again only when Serve handed
        over new information for a replica (its multiplexed ids or routing stats object
        changed); the queue length is this router's count, current at every call."""
        states = []
        cache = self._states
        for r in replicas:
            key = self._key(r.replica_id)
            mux, stats = r.multiplexed_model_ids, r.routing_stats
            cached = cache.get(key)
            if cached is None or cached[0] is not mux or cached[1] is not stats:
                state = replica_state(
                    key,
                    queue_len=0,
                    multiplexed_model_ids=mux,
                    routing_stats=stats,
                    base_model_id=self._base_model_id,
                    max_ongoing=r.max_ongoing_requests,
                )
                ran = self._ran_on.get(key)
                if ran:
                    # Forget what Serve no longer lists there (evicted); promote the rest.
                    ran &= state.loading | state.gpu | state.cpu
                    if ran & state.loading:
                        state = self._promoted(state, ran & state.loading)
                cache[key] = (mux, stats, state)
            else:
                state = cached[2]
            state.queue_len = self._queue_len(key, now)
            states.append(state)
        if len(cache) > 2 * len(replicas) + 16:
            live = {self._key(r.replica_id) for r in replicas}
            for key in [k for k in cache if k not in live]:
                del cache[key]
                self._ran_on.pop(key, None)
                self._routed.pop(key, None)
        return states

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_key = {self._key(r.replica_id): r for r in candidate_replicas}
        request_id = pending_request.metadata.internal_request_id if pending_request else None
        decided = self._decided.get(request_id) if request_id else None
        decision = decided[0] if decided else None
        if decision is None or decision.first not in by_key:
            model_id = pending_request.metadata.multiplexed_model_id if pending_request else ""
            adapter = adapter_of(model_id, self._base_model_id) if model_id else None
            now = time.monotonic()
            states = self.states(candidate_replicas, now)
            decision = self._policy.choose(adapter, states, now)
            if decision.first is not None:
                self._routed.setdefault(decision.first, deque()).append(now)
            self._record(decision, adapter, states)
            if request_id:
                self._decided[request_id] = (decision, adapter)
                while len(self._decided) > MAX_REMEMBERED:
                    self._decided.popitem(last=False)
        return [
            [by_key[key] for key in tier if key in by_key]
            for tier in decision.ranked
            if any(key in by_key for key in tier)
        ]

    def _record(self, decision: Decision, adapter: str | None, states: list[ReplicaState]) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        tier = "base" if decision.tier is None else decision.tier.label
        policy = self._policy_name
        reason = decision.reason.value
        metrics.decisions.inc(tags={"policy": policy, "tier": tier, "reason": reason})
        if adapter is None or decision.tier is None:
            return
        if decision.tier <= Tier.CPU:
            metrics.hits.inc(tags={"policy": policy})
        else:
            metrics.misses.inc(tags={"policy": policy})
        holders = sum(1 for s in states if s.tier(adapter) <= Tier.LOADING)
        metrics.adapter_replicas.set(holders, tags={"adapter": metrics.labels.label(adapter)})
