"""What the files of an adapter folder must look like, checked by both sides: the operator's
catalog scan (from the listing, the config, and in mounted folders the first bytes of the
weight file) and the runtime's download (from the files on disk, before the engine may load
them). Pure: bytes in, a problem out.

- ``adapter_config.json`` is at most :data:`MAX_CONFIG_BYTES` (1 MiB; PEFT writes a few
  hundred bytes) and is never read past that limit. JSON nested deeper than Python's parser
  recurses is a broken config, not a crash (:func:`parse_config`).
- ``adapter_model.safetensors`` must be a safetensors file, as the format's specification
  (https://huggingface.co/docs/safetensors/index#format) and its reference implementation
  (``safetensors/src/tensor.rs``) define it: 8 bytes, a little-endian unsigned 64-bit header
  length N; N bytes of UTF-8 JSON starting with ``{`` (trailing spaces allowed) mapping each
  tensor name to ``dtype``, ``shape`` and ``data_offsets`` (relative to the byte after the
  header), plus an optional ``__metadata__`` object of strings; then the tensor bytes, every
  byte of them covered by exactly one tensor (no holes: no polyglot files). N is at most
  100,000,000, the reference implementation's limit. A pickle, a ``torch.save`` file or random
  bytes under that name fail here, before any engine is handed them."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any, Final

CONFIG_FILE: Final = "adapter_config.json"
SAFETENSORS_FILE: Final = "adapter_model.safetensors"
WEIGHT_FILES: Final = (SAFETENSORS_FILE, "adapter_model.bin")

MAX_CONFIG_BYTES: Final = 1024 * 1024
# The safetensors reference implementation refuses longer headers (a denial of service).
MAX_SAFETENSORS_HEADER_BYTES: Final = 100_000_000
# How much of a safetensors file the operator reads: the header of a LoRA adapter with a
# couple of thousand tensors. A longer header is checked by length only there, in full by
# the runtime after the download.
SAFETENSORS_HEAD_BYTES: Final = 256 * 1024

# Bytes per element of the dtypes the format names; sub-byte dtypes (F4, F6_*) are checked
# for valid offsets only.
_DTYPE_BYTES: Final[Mapping[str, int]] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "C64": 8,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
_SUB_BYTE_DTYPES: Final = frozenset({"F4", "F6_E2M3", "F6_E3M2"})


def config_too_large(size: int) -> str | None:
    """Why an adapter_config.json of ``size`` bytes is refused unread, or None."""
    if size > MAX_CONFIG_BYTES:
        return f"{CONFIG_FILE} is {size} bytes; at most {MAX_CONFIG_BYTES} (1 MiB) are read"
    return None


def parse_config(config: bytes) -> tuple[Any, str | None]:
    """``(parsed, None)``, or ``(None, why)`` when ``config`` is not JSON (including JSON
    nested too deep to parse, which raises RecursionError rather than ValueError)."""
    try:
        return json.loads(config), None
    except RecursionError:
        return None, f"{CONFIG_FILE} is nested too deeply to parse"
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"{CONFIG_FILE} is not valid JSON: {err}"


def safetensors_header_length(head: bytes) -> int | None:
    """N, the header length a safetensors file starting with ``head`` declares (None when
    ``head`` is shorter than 8 bytes)."""
    if len(head) < 8:
        return None
    return int(struct.unpack("<Q", head[:8])[0])


def safetensors_problem(head: bytes, file_size: int) -> str | None:
    """Why a file of ``file_size`` bytes that starts with ``head`` is not a safetensors file,
    or None when nothing in ``head`` says so.

    With the whole header in ``head`` (the runtime, or the operator for headers up to
    :data:`SAFETENSORS_HEAD_BYTES`) the check is complete; with less, only the length and the
    first bytes are checked and the caller must check again once it has the whole file."""
    name = SAFETENSORS_FILE
    length = safetensors_header_length(head)
    if length is None or file_size < 8:
        return f"{name} is {file_size} bytes, shorter than a safetensors header length (8)"
    if length > MAX_SAFETENSORS_HEADER_BYTES:
        return (
            f"{name} declares a {length}-byte safetensors header; at most "
            f"{MAX_SAFETENSORS_HEADER_BYTES} are allowed (not a safetensors file?)"
        )
    if 8 + length > file_size:
        return (
            f"{name} declares a {length}-byte safetensors header but the file is only "
            f"{file_size} bytes (truncated, or not a safetensors file)"
        )
    if length < 2 or (len(head) > 8 and head[8:9] != b"{"):
        return f"{name} is not a safetensors file: its header is not a JSON object"
    if len(head) < 8 + length:
        return None  # the rest of the header is checked where the whole file is
    return _header_problem(head[8 : 8 + length], file_size - 8 - length)


def _header_problem(raw: bytes, buffer_size: int) -> str | None:
    name = SAFETENSORS_FILE

    def refuse(problem: str) -> str:
        return f"{name} is not a valid safetensors file: {problem}"

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        return refuse("its JSON header is nested too deeply")
    except (ValueError, UnicodeDecodeError) as err:
        return refuse(f"its header is not JSON ({err})")
    if not isinstance(header, dict):
        return refuse("its header is not a JSON object")
    spans: list[tuple[int, int]] = []
    for tensor, info in header.items():
        if tensor == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                return refuse("__metadata__ is not an object of strings")
            continue
        problem = _tensor_problem(info)
        if problem is not None:
            return refuse(f"tensor {tensor[:80]!r}: {problem}")
        begin, end = info["data_offsets"]
        spans.append((begin, end))
    if not spans:
        return refuse("it holds no tensors")
    spans.sort()
    position = 0
    for begin, end in spans:
        if begin != position:
            return refuse("the tensors' byte ranges overlap or leave holes")
        position = end
    if position != buffer_size:
        return refuse(
            f"the tensors cover {position} bytes but {buffer_size} follow the header "
            "(truncated, or extra bytes)"
        )
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:80]!r}")
        result[key] = value
    return result


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_problem(info: Any) -> str | None:
    if not isinstance(info, dict):
        return "not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or (dtype not in _DTYPE_BYTES and dtype not in _SUB_BYTE_DTYPES):
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return "shape is not a list of non-negative integers"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        return "data_offsets is not [begin, end] with 0 <= begin <= end"
    width = _DTYPE_BYTES.get(dtype)
    if width is not None and offsets[1] - offsets[0] != math.prod(shape) * width:
        return f"data_offsets span {offsets[1] - offsets[0]} bytes, {dtype}{shape} needs " + str(
            math.prod(shape) * width
        )
    return None
