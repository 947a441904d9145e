"""The HTTP door's pure checks (``core.request_input``) and the bounded error bodies
(``core.errors``): what a client gets for a bad body before anything parses or serves it.
The same rules on the wire: tests/runtime/test_bad_input_http.py."""

from __future__ import annotations

from typing import Any

import pytest

from lorafleet_runtime.core.errors import MAX_SHOWN_CHARS, InputError, error_body, shown
from lorafleet_runtime.core.request_input import (
    MAX_REQUEST_BYTES,
    check_content_length,
    check_model,
    check_sampling,
    parse_body,
    validation_error,
)


def _refused(call: Any, *args: Any) -> InputError:
    with pytest.raises(InputError) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(
    "raw", [b"{", b"[1]", b'"x"', b"null", b"3", b'{"temperature": NaN}', b"\xff\xfe\x00"]
)
def test_a_body_that_is_not_a_json_object_is_400(raw: bytes) -> None:
    err = _refused(parse_body, raw)
    assert (err.status_code, err.error_type) == (400, "BadRequestError")
    assert "JSON" in err.message


def test_a_json_object_is_parsed_with_unknown_fields_kept() -> None:
    assert parse_body(b'{"model": "m", "frobnicate": 1}') == {"model": "m", "frobnicate": 1}


@pytest.mark.parametrize("header", [str(MAX_REQUEST_BYTES + 1), str(10 * 1024 * 1024)])
def test_a_declared_body_over_the_limit_is_413(header: str) -> None:
    err = _refused(check_content_length, header)
    assert (err.status_code, err.error_type) == (413, "RequestTooLargeError")
    assert f"{header} bytes" in err.message
    assert str(MAX_REQUEST_BYTES) in err.message


@pytest.mark.parametrize("header", [None, "0", str(MAX_REQUEST_BYTES)])
def test_a_body_up_to_the_limit_passes(header: str | None) -> None:
    check_content_length(header)


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({}, "names no model"),
        ({"model": None}, "names no model"),
        ({"model": 5}, "is an integer"),
        ({"model": 1.5}, "is a number"),
        ({"model": True}, "is a boolean"),
        ({"model": ["tiny"]}, "is an array"),
        ({"model": {"id": "tiny"}}, "is an object"),
    ],
)
def test_model_is_required_and_a_string(payload: dict[str, Any], says: str) -> None:
    err = _refused(check_model, payload, "tiny")
    assert (err.status_code, err.param) == (400, "model")
    assert says in err.message
    assert "'tiny:<adapter>'" in err.message


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
    ],
)
def test_sampling_options_out_of_range_are_400(payload: dict[str, Any], param: str) -> None:
    err = _refused(check_sampling, payload)
    assert (err.status_code, err.param) == (400, param)
    assert f"'{param}' is " in err.message


@pytest.mark.parametrize(
    "payload",
    [
        {"max_tokens": 1, "temperature": 0, "top_p": 1},
        {"temperature": 2, "top_p": 0.01, "max_tokens": 10**9},  # the engine's limit, not ours
        {"max_tokens": None, "temperature": None},
        {"max_tokens": "many"},  # pydantic's to refuse, with its message
    ],
)
def test_sampling_options_in_range_pass(payload: dict[str, Any]) -> None:
    check_sampling(payload)


def test_a_validation_error_names_the_field_and_never_echoes_the_value() -> None:
    huge = "x" * 100_000
    err = validation_error(
        [{"loc": ("body", "stop", 0), "msg": "Input should be a valid string", "input": huge}]
    )
    assert (err.status_code, err.param) == (400, "stop.0")
    assert err.message == "'stop.0': Input should be a valid string."
    assert "xxx" not in err.message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tiny:a0\n", "'tiny:a0\\n'"),
        ("tiny:a0\x00", "'tiny:a0\\x00'"),
        ("tiny:\u202ea0", "'tiny:\\u202ea0'"),
        ("tiny:\U0001f600", "'tiny:\\U0001f600'"),
    ],
)
def test_shown_names_are_escaped(name: str, expected: str) -> None:
    assert shown(name) == expected


def test_shown_names_are_cut_short_with_their_length() -> None:
    text = shown("a" * 20_000)
    assert len(text) < MAX_SHOWN_CHARS + 40
    assert text.endswith("... (20000 characters)")


def test_error_bodies_are_openai_shaped_and_bounded() -> None:
    body = error_body(400, "BadRequestError", "m" * 50_000, "model")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == 400
    assert len(str(body["error"]["message"])) <= 1000
