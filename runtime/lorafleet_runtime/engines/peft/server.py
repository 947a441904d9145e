"""The PEFT engine's Serve deployment: lorafleet's LLM server with a transformers + PEFT
engine in place of vLLM.

``PeftServer`` is ``LoraFleetServer`` (the vLLM engine's server) with another engine class, so
the adapter path is the same code: the catalogs' index, the disk cache (atomic downloads,
revisions), per-adapter locks, Serve's multiplex LRU of ``max_loras`` (with lorafleet's
frequency-aware eviction), draining before an eviction, failure memory and the 404/422/503
errors, the tier header and the residency report. What is the engine's own:

- ``PeftLLMEngine`` (Ray Serve LLM's ``LLMEngine`` protocol): ``resolve_lora`` loads into the
  PeftModel (refusals are ``ValueError``: 422 EngineRejected), chat and completions run
  through the step-level batch (``engine.PeftEngine``);
- ``_engine_remove`` deletes the adapter from the PeftModel (its memory is freed);
- adapters are judged for this engine (``ENGINE_KIND = "peft"``: modules_to_save and any rank
  served, DoRA refused), as the ingress judges them;
- the residency report places every loaded adapter in the ``gpu`` tier (resident and served
  without a load: the engine has no host-memory tier), on whatever device the engine runs;
- ``peft_stats()``: forward passes and how many adapters each mixed."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import ray
from ray.llm._internal.serve.core.configs.openai_api_models import ErrorInfo, ErrorResponse
from ray.llm._internal.serve.core.engine.protocol import LLMEngine

from lorafleet_api.naming import split_model
from lorafleet_runtime.engines.peft import protocol
from lorafleet_runtime.engines.peft.engine import PeftEngine
from lorafleet_runtime.engines.vllm.server import LoraFleetServer, runtime_args_of
from lorafleet_runtime.router.policy import Tier

log = logging.getLogger("lorafleet.server")

HTTP_NOT_IMPLEMENTED = 501


def _unsupported(what: str) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorInfo(
            message=f"{what} is not supported by the peft engine",
            type="NotImplementedError",
            code=HTTP_NOT_IMPLEMENTED,
        )
    )


class PeftLLMEngine(LLMEngine):
    """Ray Serve LLM's engine protocol over ``PeftEngine``."""

    def __init__(self, llm_config: Any) -> None:
        self._args = runtime_args_of(llm_config)
        self.core: PeftEngine | None = None
        self.batch_metrics: Any = None

    async def start(self) -> None:
        from ray.llm._internal.common.utils.download_utils import download_model_files

        from lorafleet_runtime.engines.vllm.config import engine_model_source
        from lorafleet_runtime.metrics import BatchMetrics

        engine = self._args.engine
        # Bucket URIs (s3://, gs://) are downloaded as Ray Serve LLM does for vLLM; local
        # paths and Hugging Face ids pass through (transformers fetches the latter).
        model_source = engine_model_source(self._args.model_source)
        downloaded = await asyncio.to_thread(
            download_model_files, model_id=model_source, download_extra_files=False
        )
        source = downloaded or model_source
        device = "cuda" if self._args.use_gpu else "cpu"
        self.batch_metrics = BatchMetrics()
        core = await asyncio.to_thread(
            PeftEngine.from_pretrained,
            source,
            dtype=engine.dtype,
            device=device,
            max_loras=engine.max_loras,
            max_model_len=engine.max_model_len,
            on_forward=self.batch_metrics.record,
        )
        core.start()
        self.core = core
        log.info("Started the peft engine on %s (%s)", device, self._args.model_source)

    def _core(self) -> PeftEngine:
        if self.core is None:
            raise RuntimeError("the peft engine has not started")
        return self.core

    def _adapter_of(self, model: str | None) -> str | None:
        """The multiplexed model id the request's adapter was loaded under; None: the base."""
        if not model:
            return None
        adapter = split_model(model, self._args.model_id)[1]
        return None if adapter is None else model

    def routing_stats(self) -> dict[str, Any]:
        return {}

    async def resolve_lora(self, lora_model: Any) -> None:
        await self._core().load_adapter(lora_model.model_id, Path(lora_model.local_path))

    async def remove_lora(self, model_id: str) -> bool:
        return await self._core().remove_adapter(model_id)

    # Ray declares the request methods as coroutines returning generators; its own engines
    # (and LLMServer, which calls them) use async generator functions, as here.
    async def chat(  # type: ignore[override]
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        async for item in protocol.chat(self._core(), request, self._adapter_of(request.model)):
            yield item

    async def completions(  # type: ignore[override]
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        adapter = self._adapter_of(request.model)
        async for item in protocol.completions(self._core(), request, adapter):
            yield item

    async def embeddings(  # type: ignore[override]
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        yield _unsupported("embeddings")

    async def transcriptions(  # type: ignore[override]
        self, request: Any, raw_request_info: Any = None
    ) -> AsyncGenerator[Any, None]:
        yield _unsupported("transcriptions")

    async def reset_prefix_cache(self) -> None:
        return None  # no prefix cache

    async def check_health(self) -> None:
        self._core().check()

    async def shutdown(self) -> None:
        if self.core is not None:
            await asyncio.to_thread(self.core.shutdown)


class PeftServer(LoraFleetServer):
    ENGINE_KIND = "peft"
    _default_engine_cls = PeftLLMEngine  # type: ignore[assignment]

    def _engine(self) -> PeftLLMEngine:
        return cast(PeftLLMEngine, self.engine)

    def _peft(self) -> PeftEngine:
        return self._engine()._core()

    async def _engine_remove(self, model_id: str, name: str) -> None:
        if await self._engine().remove_lora(model_id):
            self._metrics.adapter_evictions.inc(tags=self._metrics.tags(name))
            log.info("Removed adapter %s from the PeftModel", name)

    def _tier_of(self, name: str) -> Tier:
        # Loaded is resident: the PeftModel has no host-memory tier between disk and use.
        tier: Tier = super()._tier_of(name)
        return Tier.GPU if tier is Tier.CPU else tier

    async def residency(self) -> dict[str, Any]:
        report: dict[str, Any] = await super().residency()
        loaded = sorted(
            split_model(model_id, self._args.model_id)[1] or model_id
            for model_id in self._peft().loaded()
        )
        report.update(gpu=loaded, cpu=[], engine=loaded)
        return report

    async def peft_stats(self) -> dict[str, Any]:
        """The engine's batching and memory figures (``PeftEngine.stats``)."""
        return self._peft().stats()

    @classmethod
    def get_deployment_options(cls, llm_config: Any) -> dict[str, Any]:  # type: ignore[override]
        """The replica holds the model itself: one CPU, or one GPU with ``use_gpu`` (no
        placement group, unlike vLLM's workers)."""
        args = runtime_args_of(llm_config)
        options: dict[str, Any] = copy.deepcopy(llm_config.deployment_config)
        actor: dict[str, Any] = dict(options.get("ray_actor_options") or {})
        if args.use_gpu:
            actor.setdefault("num_gpus", 1)
            if args.accelerator_type:
                actor.setdefault("accelerator_type", args.accelerator_type)
        else:
            actor.setdefault("num_cpus", 1)
        actor["runtime_env"] = {
            **ray.get_runtime_context().runtime_env,
            **actor.get("runtime_env", {}),
            **(llm_config.runtime_env or {}),
        }
        options["ray_actor_options"] = actor
        return options
