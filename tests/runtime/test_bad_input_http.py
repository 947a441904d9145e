"""Bad input at the runtime's HTTP door (chat and text completions, streaming or not, and
``/v1/models/<name>``) on a real Ray Serve + vLLM (CPU) deployment: each gets its exact status
and an OpenAI-style error body (``{"error": {"message", "type", "param", "code"}}``) that says
what to change, echoes no unbounded input, and the server answers the next good request."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from lorafleet_runtime.core.request_input import MAX_REQUEST_BYTES

from .conftest import MODEL_ID, Deployment

pytestmark = pytest.mark.runtime

GOOD_ADAPTER = f"{MODEL_ID}:a0"
MAX_MODEL_LEN = 4096  # the tiny model's context (its config), which vLLM and PEFT enforce
# An error body never grows with the input: the longest legitimate one is well below this.
MAX_ERROR_BYTES = 1500
ENDPOINTS = ["completions", "chat/completions"]
TEN_MB = 10 * 1024 * 1024


def _request(endpoint: str, **fields: Any) -> dict[str, Any]:
    """A valid request for ``endpoint`` with ``fields`` changed (a value of ``...`` drops
    the field)."""
    body: dict[str, Any] = {"model": GOOD_ADAPTER, "max_tokens": 4, "temperature": 0}
    if endpoint == "completions":
        body["prompt"] = "The quick brown fox"
    else:
        body["messages"] = [{"role": "user", "content": "The quick brown fox"}]
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def _send(
    deployment: Deployment,
    path: str,
    body: bytes | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    url = urllib.parse.urlsplit(deployment.base_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=120)
    try:
        conn.request(
            method,
            path,
            body=body,
            headers={"content-type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, response.read(), response
    finally:
        conn.close()


def _post(deployment: Deployment, endpoint: str, payload: Any) -> tuple[int, bytes, Any]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return _send(deployment, f"/v1/{endpoint}", raw)


def _error(
    status: int,
    raw: bytes,
    expected_status: int,
    expected_type: str,
    *says: str,
    param: str | None = None,
) -> dict[str, Any]:
    """The error of an OpenAI-style body, checked: status, type, code, param, bounded size,
    and each of ``says`` in the message."""
    assert status == expected_status, raw[:500]
    assert len(raw) < MAX_ERROR_BYTES, f"{len(raw)} bytes: {raw[:300]!r}"
    body = json.loads(raw)
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == expected_status, error
    assert error["type"] == expected_type, error
    if param is not None:
        assert error["param"] == param, error
    for phrase in says:
        assert phrase in error["message"], error
    # Echoed names are escaped: no control or bidirectional characters reach a client's logs.
    assert not any(c in error["message"] for c in "\n\r\x00\u202e"), error
    return error


def _completion_text(deployment: Deployment, model: str = GOOD_ADAPTER, **fields: Any) -> str:
    status, raw, _ = _post(
        deployment, "completions", _request("completions", model=model, **fields)
    )
    assert status == 200, raw[:500]
    text: str = json.loads(raw)["choices"][0]["text"]
    return text


@pytest.fixture(autouse=True)
def still_serving(deployment: Deployment) -> Iterator[None]:
    """After each bad request, the server still answers a good one."""
    yield
    for endpoint in ENDPOINTS:
        status, raw, _ = _post(deployment, endpoint, _request(endpoint))
        assert status == 200, raw[:500]
        assert json.loads(raw)["choices"], raw[:500]


# ------------------------------------------------------------------ body shape
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"model": "tiny:a0", "prompt": ', "not valid JSON at line 1"),
        (b'{"model": "tiny:a0", "temperature": NaN}', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[1, 2]", "is an array; send a JSON object"),
        (b'"The quick brown fox"', "is a string; send a JSON object"),
        (b"null", "is null; send a JSON object"),
    ],
    ids=["truncated", "nan", "not-utf8", "array", "string", "null"],
)
def test_a_body_that_is_not_a_json_object_is_400(
    deployment: Deployment, endpoint: str, raw: bytes, says: str
) -> None:
    status, body, _ = _post(deployment, endpoint, raw)
    _error(status, body, 400, "BadRequestError", says)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "says"),
    [
        (..., "names no model"),
        (None, "names no model"),
        (5, "'model' is an integer, not a string"),
        ([GOOD_ADAPTER], "'model' is an array, not a string"),
        (["x" * 20000], "'model' is an array, not a string"),
        ({"id": GOOD_ADAPTER}, "'model' is an object, not a string"),
    ],
    ids=["missing", "null", "number", "list", "long-list", "object"],
)
def test_a_missing_or_non_string_model_is_400(
    deployment: Deployment, endpoint: str, stream: bool, model: Any, says: str
) -> None:
    """OpenAI's rule: no model is chosen for a request that named none (a forgotten ``model``
    must not silently get the base model instead of the caller's adapter)."""
    status, raw, _ = _post(deployment, endpoint, _request(endpoint, model=model, stream=stream))
    _error(status, raw, 400, "BadRequestError", says, f"'{MODEL_ID}:<adapter>'", param="model")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": "many"}, "max_tokens"),
        ({"stop": [["x" * 100000]]}, "stop"),
        ({"seed": {"value": 1}}, "seed"),
    ],
    ids=["max-tokens-string", "stop-huge-nested", "seed-object"],
)
def test_a_field_of_the_wrong_type_is_400_naming_it_without_echoing_it(
    deployment: Deployment, endpoint: str, fields: dict[str, Any], param: str
) -> None:
    status, raw, _ = _post(deployment, endpoint, _request(endpoint, **fields))
    error = _error(status, raw, 400, "BadRequestError", f"'{param}")
    assert error["param"].startswith(param), error


# ------------------------------------------------------------------ model names
ODD_NAMES = {
    "trailing-newline": f"{GOOD_ADAPTER}\n",
    "base-trailing-newline": f"{MODEL_ID}\n",
    "nul": f"{GOOD_ADAPTER}\x00",
    "rtl-override": f"{MODEL_ID}:\u202ea0",
    "emoji": f"{MODEL_ID}:\U0001f600",
    "long-adapter": f"{MODEL_ID}:" + "a" * 20000,
    "long-model": "x" * 20000,
    "encoded-traversal": f"{MODEL_ID}:..%2F..%2Fetc%2Fpasswd",
    "traversal": f"{MODEL_ID}:../../etc/passwd",
    "traversal-via-adapter": f"{GOOD_ADAPTER}/../a1",
    "absolute": f"{MODEL_ID}:/etc/passwd",
    "other-base": "gpt-4o",
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", list(ODD_NAMES.values()), ids=list(ODD_NAMES))
def test_an_odd_model_name_is_404_and_never_reaches_a_replica(
    deployment: Deployment, endpoint: str, stream: bool, name: str
) -> None:
    """Control and bidirectional characters, emoji, 20,000 characters, traversal: a 404 that
    says why, with the name escaped and cut short; no serve handle (no replica, no adapter
    download, no path built from the name) is ever made for it."""
    handles = deployment.ingress_call("lorafleet_state")["handles"]
    status, raw, response = _post(
        deployment, endpoint, _request(endpoint, model=name, stream=stream)
    )
    error = _error(status, raw, 404, "NotFoundError", "does not exist", param="model")
    assert response.getheader("content-type") == "application/json"
    assert len(error["message"]) < 400, error
    assert deployment.ingress_call("lorafleet_state")["handles"] == handles


def test_an_adapter_name_with_a_trailing_newline_is_not_served_as_the_adapter(
    deployment: Deployment,
) -> None:
    status, raw, _ = _post(deployment, "completions", _request("completions", model="tiny:a0\n"))
    _error(status, raw, 404, "NotFoundError", "not a valid adapter name", "'\\n'")


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/models/{MODEL_ID}:a0%0A",
        f"/v1/models/{MODEL_ID}%3Aa0%0A",
        "/v1/models/..%2F..%2Fetc%2Fpasswd",
        "/v1/models/../../etc/passwd",
        f"/v1/models/{MODEL_ID}:..%2F..%2Fetc%2Fpasswd",
        f"/v1/models/{MODEL_ID}:%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/v1/models/" + "a" * 5000,
    ],
    ids=["newline", "encoded-colon-newline", "encoded", "plain", "adapter", "dots", "long"],
)
def test_a_model_path_that_is_not_a_served_name_is_404(deployment: Deployment, path: str) -> None:
    """``/v1/models/<name>`` answers only for the exact name: Starlette's path pattern ends in
    ``$``, which matched ``tiny:a0`` followed by a newline."""
    status, raw, _ = _send(deployment, path, method="GET")
    _error(status, raw, 404, "NotFoundError", "does not exist", param="model")
    assert b"root:" not in raw


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/%2e%2e/%2e%2e/etc/passwd"),
        ("POST", "/v1/completions/..%2F..%2Fetc%2Fpasswd"),
        ("POST", "/v1/%2e%2e/v1/completions"),
    ],
)
def test_a_traversal_in_the_url_path_is_404(deployment: Deployment, method: str, path: str) -> None:
    """No route matches; the file named is never read (Starlette's 404 body, not OpenAI's:
    the unrouted 404 comes from Ray Serve LLM's FastAPI app)."""
    status, raw, _ = _send(deployment, path, json.dumps(_request("completions")).encode(), method)
    assert status == 404, raw[:300]
    assert b"root:" not in raw
    assert len(raw) < MAX_ERROR_BYTES


def test_the_served_names_still_answer_in_models(deployment: Deployment) -> None:
    status, raw, _ = _send(deployment, f"/v1/models/{GOOD_ADAPTER}", method="GET")
    assert status == 200, raw[:300]
    assert json.loads(raw)["id"] == GOOD_ADAPTER


# ------------------------------------------------------------------ sampling limits
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_400_naming_the_limit(
    deployment: Deployment, endpoint: str, stream: bool
) -> None:
    long_text = "hello " * (MAX_MODEL_LEN + 100)
    fields: dict[str, Any] = {"stream": stream}
    if endpoint == "completions":
        fields["prompt"] = long_text
    else:
        fields["messages"] = [{"role": "user", "content": long_text}]
    status, raw, response = _post(deployment, endpoint, _request(endpoint, **fields))
    error = _error(
        status, raw, 400, "BadRequestError", f"maximum context length is {MAX_MODEL_LEN}"
    )
    assert error["param"] in {"input_tokens", "input_text"}, error
    assert response.getheader("content-type") == "application/json"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"max_tokens": 0}, "max_tokens", "'max_tokens' is 0; it must be at least 1"),
        ({"max_tokens": -5}, "max_tokens", "'max_tokens' is -5; it must be at least 1"),
        (
            {"max_tokens": 10**9},
            "max_tokens",
            f"max_tokens=1000000000 cannot be greater than max_model_len={MAX_MODEL_LEN}",
        ),
        ({"temperature": 5}, "temperature", "'temperature' is 5; it must be between 0 and 2"),
        ({"temperature": -1}, "temperature", "'temperature' is -1; it must be between 0 and 2"),
        ({"top_p": 0}, "top_p", "'top_p' is 0; it must be above 0 and at most 1"),
        ({"top_p": 1.5}, "top_p", "'top_p' is 1.5"),
    ],
    ids=[
        "max-tokens-0",
        "max-tokens-negative",
        "max-tokens-huge",
        "temp-5",
        "temp-neg",
        "top-p-0",
        "top-p-1.5",
    ],
)
def test_an_option_out_of_range_is_400_naming_it(
    deployment: Deployment,
    endpoint: str,
    stream: bool,
    fields: dict[str, Any],
    param: str,
    says: str,
) -> None:
    status, raw, response = _post(deployment, endpoint, _request(endpoint, stream=stream, **fields))
    _error(status, raw, 400, "BadRequestError", says, param=param)
    assert response.getheader("content-type") == "application/json"


def test_max_completion_tokens_zero_is_400(deployment: Deployment) -> None:
    payload = _request("chat/completions", max_tokens=..., max_completion_tokens=0)
    status, raw, _ = _post(deployment, "chat/completions", payload)
    _error(status, raw, 400, "BadRequestError", "at least 1", param="max_completion_tokens")


def test_an_unknown_field_is_ignored(deployment: Deployment) -> None:
    """OpenAI ignores fields it does not know; so does vLLM 0.32 (``extra="allow"``, logged)."""
    plain = _completion_text(deployment, max_tokens=8)
    assert _completion_text(deployment, max_tokens=8, frobnicate={"x": 1}) == plain


# ------------------------------------------------------------------ size
def _raw_exchange(
    deployment: Deployment, head: bytes, body_chunks: Iterator[bytes], timeout: float = 60
) -> tuple[bytes, int]:
    """Send ``head`` and then ``body_chunks`` from another thread while reading the answer
    here: the server may answer (and close) before the body is all sent. Returns the answer
    and how many body bytes were sent when it came."""
    url = urllib.parse.urlsplit(deployment.base_url)
    sock = socket.create_connection((url.hostname or "", url.port or 80), timeout=timeout)
    sent = [0]
    answered = threading.Event()

    def send_body() -> None:
        try:
            for chunk in body_chunks:
                if answered.is_set():
                    return
                sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass

    try:
        sock.sendall(head)
        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        answer = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            answer += data
            head_end = answer.find(b"\r\n\r\n")
            if head_end >= 0:
                headers = answer[:head_end].decode("latin-1").lower()
                length = next(
                    (
                        int(line.split(":")[1])
                        for line in headers.split("\r\n")
                        if line.startswith("content-length:")
                    ),
                    None,
                )
                if length is not None and len(answer) >= head_end + 4 + length:
                    break
        answered.set()
        sent_when_answered = sent[0]
        sender.join(timeout=30)
        return answer, sent_when_answered
    finally:
        sock.close()


def _split_answer(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer[:200]
    return int(head.split()[1]), body


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_body_declared_over_the_limit_is_413_before_it_is_sent(
    deployment: Deployment, endpoint: str
) -> None:
    """A Content-Length of 10 MB is refused from the headers: the answer comes although not
    one byte of the body was sent (a server that read the body first would wait)."""
    url = urllib.parse.urlsplit(deployment.base_url)
    head = (
        f"POST /v1/{endpoint} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {TEN_MB}\r\n\r\n"
    ).encode()
    answer, sent = _raw_exchange(deployment, head, iter(()), timeout=30)
    status, body = _split_answer(answer)
    assert sent == 0
    _error(
        status, body, 413, "RequestTooLargeError", f"{TEN_MB} bytes", f"at most {MAX_REQUEST_BYTES}"
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_chunked_body_over_the_limit_is_413(deployment: Deployment, endpoint: str) -> None:
    """Without Content-Length the body is counted as it arrives and refused past the limit,
    never parsed."""
    url = urllib.parse.urlsplit(deployment.base_url)
    head = (
        f"POST /v1/{endpoint} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = 64 * 1024

    def chunks() -> Iterator[bytes]:
        yield b'%x\r\n{"model": "tiny:a0", "prompt": "\r\n' % len(
            b'{"model": "tiny:a0", "prompt": "'
        )
        for _ in range(TEN_MB // piece):
            yield b"%x\r\n" % piece + b"a" * piece + b"\r\n"
        yield b'3\r\n"}\n\r\n0\r\n\r\n'

    answer, _ = _raw_exchange(deployment, head, chunks(), timeout=60)
    status, body = _split_answer(answer)
    _error(status, body, 413, "RequestTooLargeError", f"at most {MAX_REQUEST_BYTES}")


def test_a_body_just_under_the_limit_is_parsed(deployment: Deployment) -> None:
    """The limit is on bytes, not a blanket refusal of large bodies: a 7 MB prompt is read and
    gets the engine's own answer (too long for the context)."""
    payload = _request("completions", prompt="a" * (MAX_REQUEST_BYTES - 1024))
    status, raw, _ = _post(deployment, "completions", payload)
    _error(status, raw, 400, "BadRequestError", f"maximum context length is {MAX_MODEL_LEN}")
