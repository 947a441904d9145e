"""The HTTP ingress: Ray Serve LLM's OpenAiIngress, with answers about adapters given here,
before any LLM replica is involved.

- ``<modelId>:<adapter>`` is checked against the catalogs' index: unknown → 404, known but
  invalid or incompatible with this engine → 422 with the reason, recently failed to fetch →
  503 with the cause (remembered for ``failure_memory_s``).
- ``/v1/models`` lists the base model and every servable adapter (with parent, rank and
  revision) from the index: no bucket listing, no cap at 1,000.
- Per-name state is bounded: handles are created only for names that passed the index check
  and kept in an LRU; failures and metric labels are bounded too.
- Chat and text completions pass the HTTP door first (``core.request_input``): body size,
  JSON shape, ``model`` and the shared sampling ranges are checked before pydantic parses
  the body; every error here is an OpenAI-style body whose echoed input is cut short
  (``core.errors.shown``)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any, Final

from fastapi import Request, status
from pydantic import ValidationError
from ray.exceptions import RayActorError
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    OpenAIHTTPException,
)
from ray.llm._internal.serve.core.ingress.ingress import CallMethod, OpenAiIngress
from ray.llm._internal.serve.utils.server_utils import replace_prefix
from starlette.responses import JSONResponse, Response

from lorafleet_api.contract import RuntimeArgs
from lorafleet_api.naming import adapter_model_id, invalid_adapter_name_reason, split_model
from lorafleet_runtime.adapters.index import AdapterIndex, open_index_source
from lorafleet_runtime.core.admission import judge_adapter
from lorafleet_runtime.core.errors import (
    InputError,
    error_body,
    find_adapter_error,
    interrupted_stream_event,
    shown,
)
from lorafleet_runtime.core.failures import DEFAULT_TTL_SECONDS, FailureMemory
from lorafleet_runtime.core.request_input import (
    MAX_REQUEST_BYTES,
    check_content_length,
    check_model,
    check_sampling,
    parse_body,
    too_large,
    validation_error,
)
from lorafleet_runtime.metrics import RuntimeMetrics
from lorafleet_runtime.router.residency import TIER_HEADER, TierMarker

MAX_HANDLES: Final = 1024
INDEX_WAIT_SECONDS: Final = 30.0


class ParamHTTPError(OpenAIHTTPException):  # type: ignore[misc]
    """Ray Serve LLM's error with OpenAI's ``param`` (the request field at fault)."""

    param: str | None = None


_ERROR_CLASSES: dict[str, type[ParamHTTPError]] = {}
MAX_ERROR_CLASSES: Final = 64
# Filled by _get_response with the replica's tier report, read by _process_llm_request (the
# response stream runs in the request's task, so they share this context).
_TIER: ContextVar[dict[str, str] | None] = ContextVar("lorafleet_tier", default=None)


def http_error(
    status_code: int, reason: str, message: str, param: str | None = None
) -> ParamHTTPError:
    """An error Ray Serve LLM answers with ``status_code`` and an OpenAI-style body whose
    ``type`` is ``reason`` (e.g. AccessDenied, RankTooHigh): Ray writes the exception's class
    name there, so each reason gets a subclass of that name (a small, fixed vocabulary; any
    other string keeps the base class). Chat and text completions render it themselves
    (``error_response``), with ``param``."""
    cls = _ERROR_CLASSES.get(reason)
    if cls is None:
        if not reason.isidentifier() or len(_ERROR_CLASSES) >= MAX_ERROR_CLASSES:
            cls = ParamHTTPError
        else:
            cls = type(reason, (ParamHTTPError,), {"__module__": __name__})
            _ERROR_CLASSES[reason] = cls
    err = cls(status_code=status_code, message=message, type=reason)
    err.param = param
    return err


def error_response(
    err: InputError | OpenAIHTTPException, retry_after_s: float = DEFAULT_TTL_SECONDS
) -> JSONResponse:
    """The OpenAI-style error body for ``err``, without Ray's decoration (which repeats the
    message three times). A 503 says when to retry (``Retry-After``): the failure is
    remembered that long, so an earlier retry gets the same answer."""
    if isinstance(err, InputError):
        return JSONResponse(
            error_body(err.status_code, err.error_type, err.message, err.param),
            status_code=err.status_code,
        )
    error_type = err.type
    if not error_type or error_type == "Unknown":
        error_type = HTTPStatus(err.status_code).phrase.replace(" ", "") + "Error"
    headers = None
    if err.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    return JSONResponse(
        error_body(err.status_code, error_type, err.message, getattr(err, "param", None)),
        status_code=err.status_code,
        headers=headers,
    )


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, refused (413) past ``limit`` bytes: a declared Content-Length before
    any of it is read, a chunked body as soon as it passes the limit."""
    check_content_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


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

    # ----------------------------------------------------------------- the HTTP door
    async def completions(self, request: Request) -> Response:  # type: ignore[override]
        return await self._serve_through_door(
            request, CompletionRequest, CallMethod.COMPLETIONS.value
        )

    async def chat(self, request: Request) -> Response:  # type: ignore[override]
        return await self._serve_through_door(request, ChatCompletionRequest, CallMethod.CHAT.value)

    async def _serve_through_door(
        self, request: Request, request_cls: Any, call_method: str
    ) -> Response:
        """Ray Serve LLM's endpoint, with the body read and checked here rather than by
        FastAPI: bounded in size, and every refusal an OpenAI-style body."""
        try:
            payload = parse_body(await read_body(request))
            check_model(payload, self._args.model_id)
            check_sampling(payload)
            try:
                body = request_cls.model_validate(payload)
            except ValidationError as err:
                raise validation_error(err.errors(include_input=False)) from None
            return await self._process_llm_request(body, call_method, raw_request=request)
        except (InputError, OpenAIHTTPException) as err:
            return error_response(err, self._failures.ttl_seconds)

    # ----------------------------------------------------------------- admission
    async def _get_model_id(self, model: str | None) -> str:
        if model is None:  # other endpoints (embeddings, tokenize): Ray's default model
            default: str = await super()._get_model_id(model)
            return default
        model_id = model
        ours, adapter = split_model(model_id, self._args.model_id)
        if not ours:
            raise http_error(
                status.HTTP_404_NOT_FOUND,
                "NotFoundError",
                f"The model {shown(model_id)} does not exist: this server serves "
                f"{self._args.model_id!r} and its adapters "
                f"{adapter_model_id(self._args.model_id, '<adapter>')!r} "
                "(GET /v1/models lists them).",
                "model",
            )
        if adapter is None:
            return model_id
        bad_name = invalid_adapter_name_reason(adapter)
        if bad_name is not None:
            raise http_error(
                status.HTTP_404_NOT_FOUND,
                "NotFoundError",
                f"The model {shown(model_id)} does not exist: not a valid adapter name "
                f"({bad_name}).",
                "model",
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
        first = True
        try:
            async for response in super()._get_response(
                body=body, call_method=call_method, **kwargs
            ):
                if isinstance(response, TierMarker):
                    report = _TIER.get()
                    if report is not None:
                        report["tier"] = response.tier
                    continue
                if first:
                    # The engine refused the request (vLLM's limits): keep its ``param``,
                    # which Ray's conversion drops. Streams come in batches (lists).
                    head = response[0] if isinstance(response, list) and response else response
                    if isinstance(head, ErrorResponse):
                        error = head.error
                        raise http_error(error.code, error.type, error.message, error.param)
                first = False
                yield response
        except OpenAIHTTPException as err:
            self._metrics.request_errors.inc(tags={**tags, "status": str(err.status_code)})
            raise
        except Exception as err:
            found = find_adapter_error(err)
            if found is None and not first:
                # Mid-stream (the replica died): say so in the stream, which would just stop.
                self._metrics.request_errors.inc(tags={**tags, "status": "503"})
                yield interrupted_stream_event()
                return
            if found is None and isinstance(err, RayActorError):
                # The replica died before answering (Ray's ActorDiedError would be a bare 500).
                self._metrics.request_errors.inc(tags={**tags, "status": "503"})
                raise http_error(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    "ReplicaUnavailable",
                    "The model server replica handling this request stopped before it "
                    "answered; Ray Serve is replacing it. Retry the request.",
                ) from None
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

    async def model_data(self, model: str, request: Request) -> Any:  # type: ignore[override]
        """One model's card. Starlette's ``{model:path}`` pattern ends in ``$``, which matches
        before a trailing newline: ``/v1/models/tiny:a0%0A`` would answer for ``tiny:a0``, so
        the name must be the whole rest of the path."""
        card = None
        if request.scope.get("path", "").endswith("/v1/models/" + model):
            card = await self.model(replace_prefix(model))
        if card is None:
            return error_response(
                http_error(
                    status.HTTP_404_NOT_FOUND,
                    "NotFoundError",
                    f"The model {shown(model)} does not exist: GET /v1/models lists the base "
                    "model and its adapters.",
                    "model",
                )
            )
        return card

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
