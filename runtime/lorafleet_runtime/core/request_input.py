"""The HTTP door's checks on a chat or text completion request, in the order the ingress
applies them, before pydantic parses the body and before any replica sees it. Pure.

- Size: a body over ``MAX_REQUEST_BYTES`` is 413; a ``Content-Length`` above it is refused
  before one byte of the body is read, a chunked body as soon as it passes the limit.
- Shape: not JSON, or JSON that is not an object, is 400.
- ``model``: required and a string (OpenAI's rule: the server never picks a model, or an
  adapter, for a request that named none), else 400.
- Sampling options both engines share: ``max_tokens``/``max_completion_tokens`` at least 1,
  ``temperature`` in [0, 2], ``top_p`` in (0, 1] (vLLM's and OpenAI's ranges), else 400. Limits
  that need the model (``max_model_len``) are the engine's: also 400, with the limit named.

Unknown fields are ignored, as OpenAI and vLLM (``extra="allow"``) do."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from lorafleet_runtime.core.errors import InputError, shown

# Far above any text prompt a context window holds (128k tokens of text are ~0.5 MiB; as token
# ids, ~1 MiB), small enough that a replica never parses a body it could not serve.
MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024
HTTP_BAD_REQUEST: Final = 400
HTTP_TOO_LARGE: Final = 413
BAD_REQUEST: Final = "BadRequestError"
TOO_LARGE: Final = "RequestTooLargeError"
_JSON_TYPES: Final = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
    str: "a string",
}


def too_large(size: int | None, limit: int = MAX_REQUEST_BYTES) -> InputError:
    said = f"{size} bytes" if size is not None else "more bytes"
    return InputError(
        HTTP_TOO_LARGE,
        TOO_LARGE,
        f"The request body is {said}; at most {limit} bytes are accepted. Send a shorter "
        "prompt (or fewer messages).",
    )


def check_content_length(header: str | None, limit: int = MAX_REQUEST_BYTES) -> None:
    """Refuse a declared body size above ``limit`` before reading the body."""
    if header is None:
        return
    try:
        size = int(header)
    except ValueError:
        raise InputError(
            HTTP_BAD_REQUEST, BAD_REQUEST, "The Content-Length header is not a number."
        ) from None
    if size > limit:
        raise too_large(size, limit)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (standard JSON: no NaN or Infinity)."""
    try:
        payload = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as err:
        where = ""
        if isinstance(err, json.JSONDecodeError):
            where = f" at line {err.lineno} column {err.colno}"
        raise InputError(
            HTTP_BAD_REQUEST,
            BAD_REQUEST,
            f"The request body is not valid JSON{where}. Send a JSON object such as "
            '{"model": "...", "prompt": "..."} with Content-Type: application/json.',
        ) from None
    if not isinstance(payload, dict):
        raise InputError(
            HTTP_BAD_REQUEST,
            BAD_REQUEST,
            f"The request body is {_json_type(payload)}; send a JSON object such as "
            '{"model": "...", "prompt": "..."}.',
        )
    return payload


def check_model(payload: dict[str, Any], served: str) -> str:
    """The request's ``model``: present and a string."""
    model = payload.get("model")
    hint = f"set it to {served!r} or {served + ':<adapter>'!r} (GET /v1/models lists them)"
    if model is None:
        raise InputError(
            HTTP_BAD_REQUEST,
            BAD_REQUEST,
            f"The request names no model: {hint}.",
            "model",
        )
    if not isinstance(model, str):
        raise InputError(
            HTTP_BAD_REQUEST,
            BAD_REQUEST,
            f"'model' is {_json_type(model)}, not a string: {hint}.",
            "model",
        )
    return model


def check_sampling(payload: dict[str, Any]) -> None:
    """The sampling options both engines take, in the ranges vLLM and OpenAI accept."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = _number(payload.get(name))
        if value is not None and value < 1:
            raise InputError(
                HTTP_BAD_REQUEST,
                BAD_REQUEST,
                f"'{name}' is {value}; it must be at least 1 (leave it out for as many as "
                "the context allows).",
                name,
            )
    temperature = _number(payload.get("temperature"))
    if temperature is not None and not 0 <= temperature <= 2:
        raise InputError(
            HTTP_BAD_REQUEST,
            BAD_REQUEST,
            f"'temperature' is {temperature}; it must be between 0 and 2.",
            "temperature",
        )
    top_p = _number(payload.get("top_p"))
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(
            HTTP_BAD_REQUEST,
            BAD_REQUEST,
            f"'top_p' is {top_p}; it must be above 0 and at most 1.",
            "top_p",
        )


def validation_error(errors: Sequence[Mapping[str, object]]) -> InputError:
    """A 400 for the first of pydantic's errors, naming the field and never echoing the
    value sent (which may be as large as the body)."""
    first = errors[0] if errors else {}
    parts = first.get("loc", ())
    loc = ""
    if isinstance(parts, (tuple, list)):
        loc = ".".join(str(part) for part in parts if part != "body")
    param = shown(loc)[1:-1] if loc else None
    what = f"'{param}'" if param else "The request"
    message = str(first.get("msg", "is invalid"))
    return InputError(HTTP_BAD_REQUEST, BAD_REQUEST, f"{what}: {message}.", param)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _number(value: Any) -> int | float | None:
    """``value`` when it is a JSON number (pydantic refuses the other types itself)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)
