"""Errors a replica raises for an adapter request; the ingress turns them into OpenAI-style
error bodies with the same status. Importable without ray."""

from __future__ import annotations

import json


class AdapterRequestError(Exception):
    """An adapter request that cannot be served: 404 unknown, 422 invalid or incompatible,
    503 storage failure (with the reason, never a 404)."""

    def __init__(self, status_code: int, reason: str, message: str) -> None:
        super().__init__(status_code, reason, message)
        self.status_code = status_code
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


def find_adapter_error(err: BaseException) -> AdapterRequestError | None:
    """The AdapterRequestError inside ``err``: Ray wraps exceptions raised in a replica
    (RayTaskError keeps the original as ``cause``)."""
    seen: BaseException | None = err
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, AdapterRequestError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


# Echoed input (model names, parameter paths) is cut to this many characters, so a client
# cannot make an error body or a log line as large as its request.
MAX_SHOWN_CHARS = 64
MAX_MESSAGE_CHARS = 1000


def shown(value: str) -> str:
    """``value`` as an error message quotes it: ``repr`` (control characters, NUL and
    bidirectional overrides escaped, so a message never carries them), cut to
    ``MAX_SHOWN_CHARS`` with the full length said."""
    if len(value) <= MAX_SHOWN_CHARS:
        return ascii(value)
    return f"{value[:MAX_SHOWN_CHARS]!a}... ({len(value)} characters)"


class InputError(Exception):
    """A request refused at the HTTP door (malformed body, wrong types, out-of-range
    options, too large): answered with ``status_code`` and an OpenAI-style error body."""

    def __init__(
        self, status_code: int, error_type: str, message: str, param: str | None = None
    ) -> None:
        super().__init__(status_code, error_type, message, param)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


def error_body(
    status_code: int, error_type: str, message: str, param: str | None = None
) -> dict[str, dict[str, object]]:
    """OpenAI's error body (``{"error": {"message", "type", "param", "code"}}``); ``code`` is
    the HTTP status, as vLLM and Ray Serve LLM write it. Messages are bounded."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return {"error": {"message": message, "type": error_type, "param": param, "code": status_code}}


STREAM_INTERRUPTED = "StreamInterrupted"


def interrupted_stream_event() -> str:
    """The server-sent event that ends a stream whose replica failed after it began (its 200
    is sent, so the status cannot say it): an OpenAI-style error, which the OpenAI SDKs raise.
    Without it the stream just stopped, and a client took the partial text for the answer."""
    body = error_body(
        503,
        STREAM_INTERRUPTED,
        "The replica serving this request stopped before the response was complete: the "
        "output above is partial. Retry the request.",
    )
    return f"data: {json.dumps(body)}\n\n"
