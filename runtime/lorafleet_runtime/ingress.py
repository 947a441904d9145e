"""The HTTP ingress: Ray Serve LLM's OpenAiIngress, with answers about adapters given here,
before any LLM replica is involved.

- ``<modelId>:<adapter>`` is checked against the catalogs' index: unknown → 404, known but
  invalid or incompatible with this engine → 422 with the reason, recently failed to fetch →
  503 with the cause (remembered for ``failure_memory_s``).
- ``/v1/models`` lists the base model and every servable adapter (with parent, rank and
  revision) from the index: no bucket listing, no cap at 1,000.
- Per-name state is bounded: handles are created only for names that passed the index check
  and kept in an LRU; failures and metric labels are bounded too."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from contextvars import ContextVar
from typing import Any, Final

from fastapi import status
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ModelCard,
    OpenAIHTTPException,
)
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress
from starlette.responses import JSONResponse, Response

from lorafleet_api.contract import RuntimeArgs
from lorafleet_api.naming import adapter_model_id, is_adapter_name, split_model
from lorafleet_runtime.adapters.index import AdapterIndex, open_index_source
from lorafleet_runtime.core.admission import judge_adapter
from lorafleet_runtime.core.errors import find_adapter_error
from lorafleet_runtime.core.failures import DEFAULT_TTL_SECONDS, FailureMemory
from lorafleet_runtime.metrics import RuntimeMetrics
from lorafleet_runtime.router.residency import TIER_HEADER, TierMarker

MAX_HANDLES: Final = 1024
INDEX_WAIT_SECONDS: Final = 30.0


_ERROR_CLASSES: dict[str, type[OpenAIHTTPException]] = {}
MAX_ERROR_CLASSES: Final = 64
# Filled by _get_response with the replica's tier report, read by _process_llm_request (the
# response stream runs in the request's task, so they share this context).
_TIER: ContextVar[dict[str, str] | None] = ContextVar("lorafleet_tier", default=None)


def http_error(status_code: int, reason: str, message: str) -> OpenAIHTTPException:
    """An error Ray Serve LLM answers with ``status_code`` and an OpenAI-style body whose
    ``type`` is ``reason`` (e.g. AccessDenied, RankTooHigh): Ray writes the exception's class
    name there, so each reason gets a subclass of that name (a small, fixed vocabulary; any
    other string keeps the base class)."""
    cls = _ERROR_CLASSES.get(reason)
    if cls is None:
        if not reason.isidentifier() or len(_ERROR_CLASSES) >= MAX_ERROR_CLASSES:
            return OpenAIHTTPException(status_code=status_code, message=message, type=reason)
        cls = type(reason, (OpenAIHTTPException,), {"__module__": __name__})
        _ERROR_CLASSES[reason] = cls
    return cls(status_code=status_code, message=message, type=reason)


class LoraFleetIngress(OpenAiIngress):  # type: ignore[misc]
    # Ray Serve awaits async constructors; mypy does not know that pattern.
    async def __init__(  # type: ignore[misc]
        self,
        llm_deployments: dict[str, Any],
        model_cards: dict[str, ModelCard],
        *,
        lorafleet_args: dict[str, Any],
        lora_paths: dict[str, str] | None = None,
    ) -> None:
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        self._args = RuntimeArgs.from_serve_args(lorafleet_args)
        self._index = AdapterIndex(
            catalogs=self._args.catalogs,
            source=open_index_source(self._args.catalog_index_dir),
            read_storage_options=False,  # the ingress downloads nothing
        )
        ttl = self._args.failure_memory_s
        self._failures = FailureMemory(ttl_seconds=DEFAULT_TTL_SECONDS if ttl is None else ttl)
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self._metrics = RuntimeMetrics()
        self._index.start()

    # ----------------------------------------------------------------- admission
    async def _get_model_id(self, model: str | None) -> str:
        model_id: str = await super()._get_model_id(model)
        ours, adapter = split_model(model_id, self._args.model_id)
        if not ours or adapter is None:
            return model_id
        if not is_adapter_name(adapter):
            raise http_error(
                status.HTTP_404_NOT_FOUND,
                "NotFoundError",
                f"The model {model_id!r} does not exist: not a valid adapter name.",
            )
        await self._index.wait_ready(INDEX_WAIT_SECONDS)
        found = self._index.lookup(adapter)
        verdict = judge_adapter(
            adapter,
            found[0] if found else None,
            max_lora_rank=self._args.engine.max_lora_rank,
            engine_kind=self._args.engine.engine_kind,
        )
        if verdict.http_status is not None:
            raise http_error(
                verdict.http_status,
                "NotFoundError" if verdict.http_status == 404 else verdict.reason or "",
                f"The model {model_id!r} cannot be served: {verdict.message}.",
            )
        remembered = self._failures.recall(adapter, time.monotonic())
        if remembered is not None:
            raise http_error(
                status.HTTP_503_SERVICE_UNAVAILABLE, remembered.reason, remembered.message
            )
        return model_id

    def _get_configured_serve_handle(self, model_id: str) -> Any:
        handle = self._handles.get(model_id)
        if handle is not None:
            self._handles.move_to_end(model_id)
            return handle
        base = self._default_serve_handles[self._args.model_id]
        if model_id == self._args.model_id:
            handle = base.options(stream=True)
        else:
            handle = base.options(stream=True, multiplexed_model_id=model_id)
        self._handles[model_id] = handle
        while len(self._handles) > MAX_HANDLES:
            self._handles.popitem(last=False)
        return handle

    async def _get_response(
        self, *, body: Any, call_method: str, **kwargs: Any
    ) -> AsyncGenerator[Any, None]:
        model = getattr(body, "model", None) or self._args.model_id
        adapter = split_model(model, self._args.model_id)[1]
        # Names not in the index never get a label of their own (they all count as "other").
        known = adapter is None or self._index.lookup(adapter) is not None
        tags = self._metrics.tags(adapter, known=known)
        self._metrics.requests.inc(tags=tags)
        try:
            async for response in super()._get_response(
                body=body, call_method=call_method, **kwargs
            ):
                if isinstance(response, TierMarker):
                    report = _TIER.get()
                    if report is not None:
                        report["tier"] = response.tier
                    continue
                yield response
        except OpenAIHTTPException as err:
            self._metrics.request_errors.inc(tags={**tags, "status": str(err.status_code)})
            raise
        except Exception as err:
            found = find_adapter_error(err)
            if found is None:
                raise
            self._metrics.request_errors.inc(tags={**tags, "status": str(found.status_code)})
            if found.status_code == status.HTTP_503_SERVICE_UNAVAILABLE and adapter:
                self._failures.remember(adapter, found.reason, found.message, time.monotonic())
            raise http_error(found.status_code, found.reason, found.message) from None

    async def _process_llm_request(
        self, body: Any, call_method: str, raw_request: Any = None
    ) -> Response:
        """Ray Serve LLM's response, with the ``x-lorafleet-adapter-tier`` header: where the
        adapter was on the replica that served the request when the request reached it."""
        report: dict[str, str] = {}
        token = _TIER.set(report)
        try:
            response: Response = await super()._process_llm_request(
                body, call_method=call_method, raw_request=raw_request
            )
        finally:
            _TIER.reset(token)
        if "tier" in report:
            response.headers[TIER_HEADER] = report["tier"]
        return response

    async def lorafleet_state(self) -> dict[str, int]:
        """Sizes of the per-name state (for tests and debugging; bounded by design)."""
        return {
            "handles": len(self._handles),
            "max_handles": MAX_HANDLES,
            "failures": len(self._failures),
            "labels": self._metrics.labels.size,
            "max_labels": self._metrics.labels.k,
        }

    # ----------------------------------------------------------------- /v1/models
    def _adapter_cards(self) -> list[dict[str, Any]]:
        base = self._model_cards[self._args.model_id]
        cards = []
        for record in self._index.records():
            verdict = judge_adapter(
                record.name,
                record,
                max_lora_rank=self._args.engine.max_lora_rank,
                engine_kind=self._args.engine.engine_kind,
            )
            if verdict.http_status is not None:
                continue
            cards.append(
                {
                    "id": adapter_model_id(self._args.model_id, record.name),
                    "object": "model",
                    "owned_by": base.owned_by,
                    "permission": list(base.permission),
                    "parent": self._args.model_id,
                    "root": self._args.model_id,
                    "rank": record.rank,
                    "revision": record.revision,
                    "metadata": {
                        "parent": self._args.model_id,
                        "rank": record.rank,
                        "revision": record.revision,
                        "uri": record.uri,
                    },
                }
            )
        return cards

    async def models(self) -> JSONResponse:  # type: ignore[override]
        await self._index.wait_ready(INDEX_WAIT_SECONDS)
        base = self._model_cards[self._args.model_id].model_dump(mode="json")
        return JSONResponse({"object": "list", "data": [base, *self._adapter_cards()]})

    async def model(self, model_id: str) -> ModelCard | None:
        if model_id in self._model_cards:
            card: ModelCard = self._model_cards[model_id]
            return card
        ours, adapter = split_model(model_id, self._args.model_id)
        if not ours or adapter is None:
            return None
        for card_data in self._adapter_cards():
            if card_data["id"] == model_id:
                return ModelCard.model_validate(
                    {
                        k: card_data[k]
                        for k in ("id", "object", "owned_by", "permission", "metadata")
                    }
                )
        return None
