"""OpenAI chat and text completions on the PEFT engine, in the shapes Ray Serve LLM's ingress
takes from an LLM server (the same contract ``LLMEngine.chat``/``completions`` documents):

- not streaming: one ``ChatCompletionResponse`` / ``CompletionResponse``;
- streaming: ``"data: <chunk json>\\n\\n"`` strings, chunks as vLLM writes them (chat: a first
  delta with the role, then content deltas, the finish reason on the last; an optional usage
  chunk); the ingress adds ``data: [DONE]``;
- a request this engine refuses: one ``ErrorResponse`` (400, as vLLM answers the same input).

Unsupported options are refused rather than ignored: ``n`` > 1, ``logprobs``, ``echo``."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    ErrorInfo,
    ErrorResponse,
)

from lorafleet_runtime.engines.peft.engine import (
    AdapterNotLoadedError,
    Generation,
    InvalidRequestError,
    PeftEngine,
)
from lorafleet_runtime.engines.peft.sampling import SamplingParams

HTTP_BAD_REQUEST = 400
HTTP_UNAVAILABLE = 503


def error_response(err: InvalidRequestError) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorInfo(
            message=str(err), type="BadRequestError", param=err.parameter, code=HTTP_BAD_REQUEST
        )
    )


def _reloading(err: AdapterNotLoadedError) -> ErrorResponse:
    # The adapter left the engine between the server resolving it and this request starting
    # (a new revision being swapped in): a retry finds it. Not an AdapterRequestError, which
    # the ingress would remember as a storage failure.
    return ErrorResponse(
        error=ErrorInfo(
            message=f"{err}; retry", type="ServiceUnavailableError", code=HTTP_UNAVAILABLE
        )
    )


def _refuse_unsupported(request: Any) -> None:
    if (getattr(request, "n", 1) or 1) > 1:
        raise InvalidRequestError("n > 1 is not supported by the peft engine", "n")
    if getattr(request, "logprobs", None) or getattr(request, "top_logprobs", None):
        raise InvalidRequestError("logprobs are not supported by the peft engine", "logprobs")
    if getattr(request, "echo", False):
        raise InvalidRequestError("echo is not supported by the peft engine", "echo")


def sampling_params(request: Any, max_tokens: int) -> SamplingParams:
    """The request's sampling options (OpenAI's defaults where unset: temperature and top_p
    1). Invalid values are a 400."""
    stop = request.stop or []
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if request.temperature is None else float(request.temperature),
            top_p=1.0 if request.top_p is None else float(request.top_p),
            seed=request.seed,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            stop_token_ids=tuple(request.stop_token_ids or ()),
            ignore_eos=bool(request.ignore_eos),
            include_stop_str_in_output=bool(request.include_stop_str_in_output),
            skip_special_tokens=bool(request.skip_special_tokens),
        )
    except ValueError as err:
        raise InvalidRequestError(str(err)) from None


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _request_id(request: Any, prefix: str) -> str:
    return f"{prefix}-{getattr(request, 'request_id', None) or uuid.uuid4().hex}"


def _include_usage(request: Any) -> bool:
    options = getattr(request, "stream_options", None)
    return bool(options and options.include_usage)


def _sse(chunk: Any) -> str:
    return f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"


# ------------------------------------------------------------------------ chat
async def chat(
    engine: PeftEngine, request: ChatCompletionRequest, model_id: str | None
) -> AsyncIterator[str | ChatCompletionResponse | ErrorResponse]:
    try:
        _refuse_unsupported(request)
        prompt = engine.render_chat(
            [dict(m) for m in request.messages],
            add_generation_prompt=request.add_generation_prompt,
            template_kwargs=request.chat_template_kwargs,
        )
        asked = request.max_completion_tokens or request.max_tokens
        params = sampling_params(request, engine.max_tokens_for(len(prompt), asked))
        generation = engine.begin([prompt], model_id, params, stream=bool(request.stream))
    except InvalidRequestError as err:
        yield error_response(err)
        return
    except AdapterNotLoadedError as err:
        yield _reloading(err)
        return
    try:
        async for item in _chat_stream(generation, request, len(prompt)):
            yield item
    finally:
        generation.cancel()


async def _chat_stream(
    generation: Generation, request: ChatCompletionRequest, prompt_tokens: int
) -> AsyncIterator[str | ChatCompletionResponse]:
    request_id = _request_id(request, "chatcmpl")
    created = int(time.time())
    model = request.model
    text: list[str] = []
    tokens: list[int] = []
    finish: str | None = None
    stop_reason: str | int | None = None
    if request.stream:
        first = ChatCompletionStreamResponse.model_validate(
            {
                "id": request_id,
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
            }
        )
        yield _sse(first)
    async for _, event in generation.events():
        if event.error:
            raise RuntimeError(f"generation failed: {event.error}")
        tokens.extend(event.tokens)
        text.append(event.text)
        if request.stream and (event.text or event.finish_reason):
            choice: dict[str, Any] = {"index": 0, "delta": {"content": event.text}}
            if event.finish_reason:
                choice.update(finish_reason=event.finish_reason, stop_reason=event.stop_reason)
            if request.return_token_ids:
                choice["token_ids"] = list(event.tokens)
            chunk = ChatCompletionStreamResponse.model_validate(
                {"id": request_id, "created": created, "model": model, "choices": [choice]}
            )
            yield _sse(chunk)
        if event.finish_reason:
            finish, stop_reason = event.finish_reason, event.stop_reason
    if request.stream:
        if _include_usage(request):
            usage = ChatCompletionStreamResponse.model_validate(
                {
                    "id": request_id,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": _usage(prompt_tokens, len(tokens)),
                }
            )
            yield _sse(usage)
        return
    yield ChatCompletionResponse.model_validate(
        {
            "id": request_id,
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(text)},
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                    **({"token_ids": tokens} if request.return_token_ids else {}),
                }
            ],
            "usage": _usage(prompt_tokens, len(tokens)),
        }
    )


# ------------------------------------------------------------------------ completions
def _prompts(engine: PeftEngine, prompt: Any) -> list[list[int]]:
    """A completion request's prompts: a string, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [engine.encode(prompt)]
    if not prompt:
        raise InvalidRequestError("the prompt is empty", "prompt")
    if isinstance(prompt[0], int):
        return [engine.encode(prompt)]
    return [engine.encode(p) for p in prompt]


async def completions(
    engine: PeftEngine, request: CompletionRequest, model_id: str | None
) -> AsyncIterator[str | CompletionResponse | ErrorResponse]:
    try:
        _refuse_unsupported(request)
        prompts = _prompts(engine, request.prompt)
        # One budget for all prompts: the longest decides (vLLM checks each the same way).
        max_tokens = engine.max_tokens_for(max(len(p) for p in prompts), request.max_tokens)
        params = sampling_params(request, max_tokens)
        generation = engine.begin(prompts, model_id, params, stream=bool(request.stream))
    except InvalidRequestError as err:
        yield error_response(err)
        return
    except AdapterNotLoadedError as err:
        yield _reloading(err)
        return
    try:
        async for item in _completion_stream(generation, request, prompts):
            yield item
    finally:
        generation.cancel()


async def _completion_stream(
    generation: Generation, request: CompletionRequest, prompts: list[list[int]]
) -> AsyncIterator[str | CompletionResponse]:
    request_id = _request_id(request, "cmpl")
    created = int(time.time())
    model = request.model
    texts: list[list[str]] = [[] for _ in prompts]
    tokens: list[list[int]] = [[] for _ in prompts]
    ends: list[tuple[str | None, str | int | None]] = [(None, None) for _ in prompts]
    async for index, event in generation.events():
        if event.error:
            raise RuntimeError(f"generation failed: {event.error}")
        tokens[index].extend(event.tokens)
        texts[index].append(event.text)
        if event.finish_reason:
            ends[index] = (event.finish_reason, event.stop_reason)
        if request.stream and (event.text or event.finish_reason):
            choice: dict[str, Any] = {"index": index, "text": event.text}
            if event.finish_reason:
                choice.update(finish_reason=event.finish_reason, stop_reason=event.stop_reason)
            if request.return_token_ids:
                choice["token_ids"] = list(event.tokens)
            chunk = CompletionStreamResponse.model_validate(
                {"id": request_id, "created": created, "model": model, "choices": [choice]}
            )
            yield _sse(chunk)
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(t) for t in tokens)
    if request.stream:
        if _include_usage(request):
            usage = CompletionStreamResponse.model_validate(
                {
                    "id": request_id,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": _usage(prompt_tokens, completion_tokens),
                }
            )
            yield _sse(usage)
        return
    yield CompletionResponse.model_validate(
        {
            "id": request_id,
            "created": created,
            "model": model,
            "choices": [
                _completion_choice(i, texts[i], tokens[i], ends[i], prompts[i], request)
                for i in range(len(prompts))
            ],
            "usage": _usage(prompt_tokens, completion_tokens),
        }
    )


def _completion_choice(
    index: int,
    text: Sequence[str],
    tokens: list[int],
    end: tuple[str | None, str | int | None],
    prompt: list[int],
    request: Any,
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": index,
        "text": "".join(text),
        "logprobs": None,
        "finish_reason": end[0],
        "stop_reason": end[1],
    }
    if request.return_token_ids:
        choice.update(token_ids=tokens, prompt_token_ids=prompt)
    return choice
