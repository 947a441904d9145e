"""The LLM replica: Ray Serve LLM's LLMServer with lorafleet's adapter path.

What differs from the stock LoRA path (Ray 2.60): adapters are looked up in the catalogs'
index (not listed from one bucket prefix); files go through the AdapterDiskCache (verified, atomic,
bounded, per-adapter locks, a real timeout); when Serve's multiplex LRU evicts an adapter it is
removed from vLLM too (vLLM's ``unload_lora_adapter`` only forgets the name, the engine keeps
the weights); a new revision replaces the old weights under a new LoRA id (so no prefix-cache
block computed with old weights is reused); storage failures are 503 with the reason and are
remembered briefly; and the replica reports where each adapter is via record_routing_stats."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Final

from ray import serve
from ray.llm._internal.common.utils.cloud_utils import CloudFileSystem, is_remote_path
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.serve.llm.deployment import LLMServer

from lorafleet_api.contract import EngineKind, RuntimeArgs
from lorafleet_api.naming import split_model
from lorafleet_runtime.adapters.disk_cache import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    AdapterDiskCache,
    replica_cache_root,
)
from lorafleet_runtime.adapters.index import AdapterIndex, open_index_source
from lorafleet_runtime.adapters.remote_files import (
    AdapterStorageError,
    CatalogStorage,
    FileSources,
)
from lorafleet_runtime.core.admission import judge_adapter
from lorafleet_runtime.core.errors import AdapterRequestError
from lorafleet_runtime.core.failures import DEFAULT_TTL_SECONDS, FailureMemory
from lorafleet_runtime.core.locks import KeyedLocks
from lorafleet_runtime.engines.vllm.config import EXPERIMENTAL_KEY
from lorafleet_runtime.metrics import RuntimeMetrics
from lorafleet_runtime.router.policy import FrequencyEviction, Tier
from lorafleet_runtime.router.residency import TierMarker

log = logging.getLogger("lorafleet.server")

INDEX_WAIT_SECONDS: Final = 30.0
DRAIN_SECONDS: Final = 60.0
# The adapter the current request leased (set while resolving it, read by _run_request).
_LEASED: ContextVar[str | None] = ContextVar("lorafleet_leased_adapter", default=None)
# Where the current request's adapter was when it arrived (read by _run_request).
_ARRIVAL_TIER: ContextVar[str] = ContextVar("lorafleet_arrival_tier", default="base")


def base_model_problem(model_source: str) -> str | None:
    """Why a bucket ``model_source`` cannot be a base model (None when it can, or when it is
    not a bucket URI). Read with the storage client Ray Serve LLM downloads with, so with the
    same credentials and endpoint; an unreadable config.json counts as missing."""
    if not is_remote_path(model_source):
        return None
    config = CloudFileSystem.get_file(model_source.rstrip("/") + "/config.json")
    if config is None:
        return (
            f"baseModel.source {model_source} holds no readable config.json: it must be the "
            "folder of a Hugging Face model (config.json, tokenizer and weights), readable "
            "with the runtime's storage credentials"
        )
    return None


def runtime_args_of(llm_config: Any) -> RuntimeArgs:
    return RuntimeArgs.from_serve_args(llm_config.experimental_configs[EXPERIMENTAL_KEY])


class ResidentAdapter:
    """An adapter registered in this replica's vLLM engine: what Serve's multiplex LRU holds.

    Serve calls ``__del__`` of an evicted model (awaiting it when it is a coroutine
    function). It is set per instance, not on the class, so garbage collection never calls a
    coroutine nobody awaits."""

    def __init__(self, server: LoraFleetServer, name: str, model_id: str, revision: str) -> None:
        self.name = name
        self.model_id = model_id
        self.revision = revision
        self.__del__ = self._evicted
        self._server = server

    async def _evicted(self) -> None:
        await self._server._unregister(self)


class LoraFleetServer(LLMServer):  # type: ignore[misc]
    # Which adapters this server's engine can serve (lorafleet_api.adapter_support).
    ENGINE_KIND: ClassVar[EngineKind] = "vllm"

    # Ray Serve awaits async constructors (LLMServer's is one); mypy does not know that.
    async def __init__(self, llm_config: Any, **kwargs: Any) -> None:  # type: ignore[misc]
        args = runtime_args_of(llm_config)
        problem = await asyncio.to_thread(base_model_problem, args.model_source)
        if problem is not None:
            # Fail the replica now, with the reason in Serve's status (and so in the
            # LoRAModel's Degraded condition): without config.json, Ray Serve LLM hands vLLM
            # the bucket URI as a model name, and the replica hangs in its constructor.
            raise RuntimeError(problem)
        self._args = args
        self._index = AdapterIndex(
            catalogs=args.catalogs, source=open_index_source(args.catalog_index_dir)
        )
        cache_root = os.environ.get("LORAFLEET_ADAPTER_CACHE") or tempfile.gettempdir()
        self._disk_cache = AdapterDiskCache(
            replica_cache_root(Path(cache_root) / "lorafleet-adapters", os.getpid()),
            max_bytes=args.adapter_cache_bytes or DEFAULT_CACHE_BYTES,
            timeout_seconds=args.adapter_download_timeout_s or DEFAULT_TIMEOUT_SECONDS,
        )
        ttl = args.failure_memory_s
        self._failures = FailureMemory(ttl_seconds=DEFAULT_TTL_SECONDS if ttl is None else ttl)
        self._sources = FileSources()
        # Engine registration per adapter (the disk cache has its own per-name locks for
        # downloads, taken inside these: separate tables, so never re-entered).
        self._adapter_locks = KeyedLocks()
        self._resident: dict[str, ResidentAdapter] = {}
        # Adapters registered in the engine that no request has used yet: vLLM holds them in
        # host memory until a batch puts them into a GPU slot.
        self._unused: set[str] = set()
        self._engine_loads = 0  # adapters registered in the engine since start
        # lorafleet's policy replaces the least requested adapter when a slot is needed;
        # the affinity and ray policies keep Ray Serve's LRU (their published behaviour).
        self._eviction = FrequencyEviction() if args.router.policy == "lorafleet" else None
        self._in_flight: dict[str, int] = {}
        self._drained: dict[str, asyncio.Event] = {}
        self._metrics = RuntimeMetrics()
        await super().__init__(llm_config, **kwargs)
        self._index.start()

    # ----------------------------------------------------------------- Serve's multiplexing
    def _init_multiplex_loader(self, model_downloader_cls: Any = None) -> None:
        max_loras = self._args.engine.max_loras

        async def _load_model(model_id: str) -> ResidentAdapter:
            return await self._register(model_id)

        # The one value: Serve's per-replica LRU is exactly as big as vLLM's max_loras.
        self._load_model = serve.multiplexed(max_num_models_per_replica=max_loras)(_load_model)
        self._load_model_func = _load_model

    async def _maybe_resolve_lora_from_multiplex(self) -> None:
        model_id = serve.get_multiplexed_model_id()
        if not model_id:
            return
        name = self._adapter_name(model_id)
        _ARRIVAL_TIER.set(self._tier_of(name).label)
        if self._eviction is not None:
            self._eviction.record(name, time.monotonic())
        if name not in self._resident:
            # Serve's multiplex wrapper loads one model at a time per replica; downloading
            # before entering it lets different adapters download in parallel (the same
            # one still downloads once), leaving only the engine registration serialized.
            await self._fetch(name)
            self._steer_eviction()
        resident: ResidentAdapter = await self._load_model(model_id)
        self._unused.discard(name)
        await self._refresh_revision(resident)
        # From here until its stream ends the request uses the adapter in the engine: an
        # eviction waits for it (no await between resolving and counting, so none slips in).
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        _LEASED.set(name)

    async def _run_request(self, request: Any, **kwargs: Any) -> Any:
        _LEASED.set(None)
        _ARRIVAL_TIER.set("base")
        try:
            stream = await super()._run_request(request, **kwargs)
        except BaseException:
            self._release(_LEASED.get())
            raise
        return self._reported(stream, _ARRIVAL_TIER.get(), _LEASED.get())

    async def _reported(self, stream: Any, tier: str, name: str | None) -> AsyncIterator[Any]:
        """The engine's stream, after one TierMarker (the ingress turns it into the
        ``x-lorafleet-adapter-tier`` header and drops it); the lease ends with the stream."""
        try:
            yield TierMarker(tier)
            async for item in stream:
                yield item
        finally:
            self._release(name)

    def _release(self, name: str | None) -> None:
        if name is None:
            return
        left = self._in_flight.get(name, 0) - 1
        if left > 0:
            self._in_flight[name] = left
            return
        self._in_flight.pop(name, None)
        drained = self._drained.pop(name, None)
        if drained is not None:
            drained.set()

    async def _drain(self, name: str) -> None:
        """Wait until no request uses ``name`` in the engine (bounded: a client that never
        reads its stream must not pin an adapter forever)."""
        if not self._in_flight.get(name):
            return
        drained = self._drained.setdefault(name, asyncio.Event())
        try:
            await asyncio.wait_for(drained.wait(), DRAIN_SECONDS)
        except TimeoutError:
            log.warning("Evicted adapter %s with requests still running", name)

    def _tier_of(self, name: str) -> Tier:
        """Where ``name`` is on this replica now (before this request does anything)."""
        if name in self._resident:
            return Tier.CPU if name in self._unused else Tier.GPU
        if self._disk_cache.has(name):
            return Tier.DISK
        return Tier.REMOTE

    def _multiplex_lru(self) -> Any:
        """Ray Serve's multiplex wrapper's model table (an OrderedDict, least recently used
        first; it evicts the first entry). A private attribute of ``ray.serve.multiplex``:
        when it is not there (another Ray version) eviction stays Ray's LRU."""
        wrapper = getattr(self._load_model_func, "__serve_multiplex_wrapper", None)
        models = getattr(wrapper, "models", None)
        return models if isinstance(models, dict) else None

    def _steer_eviction(self) -> None:
        """Put the adapter lorafleet's policy would evict first in Serve's LRU order, so the
        load that follows replaces the least requested adapter, not the least recent one."""
        if self._eviction is None:
            return
        models = self._multiplex_lru()
        if models is None or len(models) < self._args.engine.max_loras:
            return
        names = {self._adapter_name(model_id): model_id for model_id in models}
        busy = {name for name, count in self._in_flight.items() if count > 0}
        victim = self._eviction.victim(names, time.monotonic(), busy=busy)
        if victim is None:
            return
        for model_id in list(models):
            if model_id != names[victim]:
                models.move_to_end(model_id)

    def evict_value(self) -> float:
        if self._eviction is None:
            return 0.0
        return self._eviction.value(self._resident, self._args.engine.max_loras, time.monotonic())

    # ----------------------------------------------------------------- adapter lifecycle
    def _adapter_name(self, model_id: str) -> str:
        ours, adapter = split_model(model_id, self._args.model_id)
        if not ours or adapter is None:
            raise AdapterRequestError(404, "NotFound", f"model {model_id!r} is not served here")
        return adapter

    async def _lookup(self, name: str) -> tuple[Any, CatalogStorage]:
        await self._index.wait_ready(INDEX_WAIT_SECONDS)
        found = self._index.lookup(name)
        if found is None:
            # The ingress may have seen a newer index than this replica: read it once more.
            await self._index.refresh()
            found = self._index.lookup(name)
        verdict = judge_adapter(
            name,
            found[0] if found else None,
            max_lora_rank=self._args.engine.max_lora_rank,
            # The engine this class runs, whatever else the arguments say.
            engine_kind=self.ENGINE_KIND,
        )
        if verdict.http_status is not None or found is None:
            raise AdapterRequestError(
                verdict.http_status or 404, verdict.reason or "NotFound", verdict.message
            )
        return found

    async def _fetch(self, name: str) -> tuple[Any, Path]:
        """The catalog record of ``name`` and its verified local folder."""
        remembered = self._failures.recall(name, time.monotonic())
        if remembered is not None:
            raise AdapterRequestError(503, remembered.reason, remembered.message)
        record, storage = await self._lookup(name)
        tags = self._metrics.tags(name)
        try:
            report = await self._disk_cache.ensure(record, self._sources.get(storage))
        except AdapterStorageError as err:
            self._metrics.download_failures.inc(tags={**tags, "reason": err.reason})
            message = f"adapter {name!r} could not be fetched: {err.message}"
            self._failures.remember(name, err.reason, message, time.monotonic())
            raise AdapterRequestError(503, err.reason, message) from None
        self._failures.forget(name)
        if report.downloaded_bytes:
            self._metrics.download_bytes.inc(report.downloaded_bytes, tags=tags)
        self._metrics.download_seconds.observe(report.seconds, tags=tags)
        return record, report.adapter.path

    async def _register(self, model_id: str) -> ResidentAdapter:
        name = self._adapter_name(model_id)
        async with self._adapter_locks.hold(name):
            record, path = await self._fetch(name)
            await self._engine_add(model_id, path, name)
            resident = ResidentAdapter(self, name, model_id, record.revision)
            self._resident[name] = resident
            self._unused.add(name)
            self._disk_cache.pin(name)
            return resident

    async def _refresh_revision(self, resident: ResidentAdapter) -> None:
        found = self._index.lookup(resident.name)
        if found is None or found[0].revision == resident.revision:
            return
        async with self._adapter_locks.hold(resident.name):
            found = self._index.lookup(resident.name)
            if found is None or found[0].revision == resident.revision:
                return
            record, path = await self._fetch(resident.name)
            await self._engine_remove(resident.model_id, resident.name)
            await self._engine_add(resident.model_id, path, resident.name)
            log.info("Replaced adapter %s with revision %s", resident.name, record.revision)
            resident.revision = record.revision

    async def _unregister(self, resident: ResidentAdapter) -> None:
        # Serve's LRU chose this adapter; requests already running with it finish first
        # (removing it under them made vLLM answer "model does not exist").
        await self._drain(resident.name)
        async with self._adapter_locks.hold(resident.name):
            await self._engine_remove(resident.model_id, resident.name)
            if self._resident.get(resident.name) is resident:
                del self._resident[resident.name]
                self._unused.discard(resident.name)
            self._disk_cache.unpin(resident.name)

    async def _engine_add(self, model_id: str, path: Path, name: str) -> None:
        started = time.monotonic()
        engine: Any = self.engine
        try:
            await engine.resolve_lora(
                DiskMultiplexConfig.model_validate(
                    {
                        "model_id": model_id,
                        "max_total_tokens": None,
                        "local_path": str(path),
                        "lora_assigned_int_id": 0,
                    }
                )
            )
        except ValueError as err:
            # The files passed the catalog's checks but the engine refused them.
            raise AdapterRequestError(422, "EngineRejected", str(err)) from None
        tags = self._metrics.tags(name)
        self._metrics.adapter_loads.inc(tags=tags)
        self._engine_loads += 1
        self._metrics.register_seconds.observe(time.monotonic() - started, tags=tags)

    async def _engine_remove(self, model_id: str, name: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        engine: Any = self.engine
        models = engine._oai_models
        lora = models.lora_requests.get(model_id)
        if lora is None:
            return
        await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=model_id))
        # vLLM's unload only forgets the name; the engine keeps the weights until told.
        await engine._engine_client.remove_lora(lora.lora_int_id)
        self._metrics.adapter_evictions.inc(tags=self._metrics.tags(name))
        log.info("Removed adapter %s from the engine", name)

    # ----------------------------------------------------------------- residency
    async def residency(self) -> dict[str, Any]:
        """Where each adapter is on this replica.

        - ``gpu``: in one of vLLM's ``max_loras`` GPU slots (a batch used it and it was not
          swapped out since); ``cpu``: registered in vLLM (its host-memory LoRA cache) without
          a slot. Both None when the workers cannot tell (another vLLM version).
        - ``engine``: everything registered in vLLM (``gpu`` + ``cpu``); ``multiplexed``: Ray
          Serve's multiplex LRU, which registers and unregisters exactly these, so the two
          agree (``max_loras`` sized); ``disk``: verified folders in the local cache."""
        engine: Any = self.engine
        registered: dict[int, str] = {}
        slotted: set[int] | None = set()
        client = getattr(engine, "_engine_client", None) if engine is not None else None
        if client is not None:
            ids = await client.list_loras()
            by_id = {
                lora.lora_int_id: name for name, lora in engine._oai_models.lora_requests.items()
            }
            registered = {
                i: split_model(by_id[i], self._args.model_id)[1] or by_id[i]
                for i in ids
                if i in by_id
            }
            slotted = await self._gpu_slots(client)
        gpu = None if slotted is None else sorted(n for i, n in registered.items() if i in slotted)
        cpu = (
            None
            if slotted is None
            else sorted(n for i, n in registered.items() if i not in slotted)
        )
        return {
            "gpu": gpu,
            "cpu": cpu,
            "engine": sorted(registered.values()),
            "multiplexed": sorted(self._resident),
            "disk": sorted(entry.name for entry in self._disk_cache.cached()),
            "disk_bytes": self._disk_cache.used_bytes,
            "max_loras": self._args.engine.max_loras,
            "evict_value": self.evict_value(),
            "engine_loads": self._engine_loads,
        }

    async def _gpu_slots(self, client: Any) -> set[int] | None:
        """LoRA ids in GPU slots on any worker of this engine (vllm_worker.py)."""
        try:
            answers = await client.collective_rpc("lorafleet_lora_slots", timeout=10)
        except Exception as err:  # noqa: BLE001 - a report, not a request: say unknown
            log.debug("GPU slot query failed: %s", err)
            return None
        if any(answer is None for answer in answers):
            return None
        return {int(i) for answer in answers for i in answer}

    async def record_routing_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(await super().record_routing_stats())
        stats["lorafleet"] = await self.residency()
        return stats
