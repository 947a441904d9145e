"""Step-level batching: every sequence in flight advances by one token per forward pass, each
row with its own adapter, and new sequences join between steps. No Ray, no PEFT: the model
is anything with ``StepModel``'s ``forward``.

One thread runs the loop. Per iteration it (1) drops cancelled rows, (2) prefills the
sequences that arrived since the last step in one forward pass (left-padded, their adapters
mixed) and merges their KV cache into the running batch, (3) decodes one token for every row
in one forward pass. Rows that finish leave the batch at once; padding columns no row needs
any more are cut from the cache.

Positions are per row (``position_ids``), so left padding never shifts a row's rotary
positions, and an attention mask hides each row's padding: a row's tokens do not depend on
what else is in its batch (up to floating-point summation order).

Merging KV caches needs the transformers cache layers whose tensors this module can pad and
concatenate (``DynamicLayer``: full attention). For any other cache (sliding windows,
recurrent state) the batcher runs in cohorts instead: sequences that arrive while a batch runs
wait until it is done, then start together."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import torch
import torch.nn.functional as functional

from lorafleet_runtime.engines.peft.sampling import (
    FinishReason,
    SamplingParams,
    TextStream,
    next_tokens,
)

log = logging.getLogger("lorafleet.peft")

# The adapter name PEFT uses for "no adapter" in a mixed batch.
BASE: Final = "__base__"
DEFAULT_MAX_ROWS: Final = 64
DEFAULT_MAX_PREFILL_TOKENS: Final = 8192


class StepModel(Protocol):
    """One forward pass over a batch whose rows may each use another adapter."""

    device: torch.device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
        adapters: Sequence[str],
    ) -> tuple[torch.Tensor, Any]:
        """Logits of each row's last position ([rows, vocab]) and the updated cache."""
        ...


@dataclass(frozen=True)
class RowEvent:
    """New tokens of a sequence and the text they released; the last one has the finish
    reason (or the error)."""

    tokens: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    error: str | None = None

    def then(self, later: RowEvent) -> RowEvent:
        """This event and a later one of the same sequence as one."""
        return RowEvent(
            self.tokens + later.tokens,
            self.text + later.text,
            later.finish_reason,
            later.stop_reason,
            later.error,
        )


@dataclass(eq=False)
class Row:
    """One sequence: submitted by the engine, advanced by the batcher thread."""

    prompt: list[int]
    adapter: str  # the engine's adapter name, or BASE
    params: SamplingParams
    text: TextStream
    emit: Callable[[RowEvent], None]
    # Streamed rows get an event per token; the others one event with all, at the end.
    stream: bool = True
    tokens: list[int] = field(default_factory=list)
    position: int = 0
    done: bool = False
    cancelled: bool = False
    generator: torch.Generator | None = None


@dataclass
class BatchStats:
    """Forward passes and what went into them (read by tests, benchmarks and metrics)."""

    forward_passes: int = 0
    prefill_passes: int = 0
    decode_steps: int = 0
    rows_finished: int = 0
    max_rows_per_forward: int = 0
    max_adapters_per_forward: int = 0
    forward_seconds: float = 0.0  # inside the model's forward passes
    step_seconds: float = 0.0  # whole steps: forward passes, sampling, bookkeeping
    # distinct adapters (the base model not counted) -> forward passes that mixed that many
    adapters_per_forward: Counter[int] = field(default_factory=Counter)

    def record(self, rows: int, adapters: Sequence[str], prefill: bool) -> int:
        """Count one forward pass; returns how many distinct adapters it mixed."""
        distinct = len(set(adapters) - {BASE})
        self.forward_passes += 1
        if prefill:
            self.prefill_passes += 1
        else:
            self.decode_steps += 1
        self.max_rows_per_forward = max(self.max_rows_per_forward, rows)
        self.max_adapters_per_forward = max(self.max_adapters_per_forward, distinct)
        self.adapters_per_forward[distinct] += 1
        return distinct

    def as_dict(self) -> dict[str, Any]:
        return {
            "forward_passes": self.forward_passes,
            "prefill_passes": self.prefill_passes,
            "decode_steps": self.decode_steps,
            "rows_finished": self.rows_finished,
            "max_rows_per_forward": self.max_rows_per_forward,
            "max_adapters_per_forward": self.max_adapters_per_forward,
            "forward_seconds": round(self.forward_seconds, 3),
            "step_seconds": round(self.step_seconds, 3),
            "adapters_per_forward": {
                str(k): v for k, v in sorted(self.adapters_per_forward.items())
            },
        }


class KVBatch:
    """The running batch's KV cache and attention mask, rows in the order of ``rows``."""

    def __init__(self, cache: Any, mask: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask

    @staticmethod
    def layers(cache: Any) -> list[Any] | None:
        """The cache's layers when each is a plain growing K/V pair (else None)."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return None
        return list(layers)

    def append(self, other: KVBatch) -> None:
        """Add ``other``'s rows after these: the shorter side is padded on the left."""
        mine, theirs = self.layers(self.cache), self.layers(other.cache)
        if mine is None or theirs is None or len(mine) != len(theirs):
            raise TypeError("this cache cannot be merged")
        length = max(self.mask.shape[1], other.mask.shape[1])
        pad_mine, pad_theirs = length - self.mask.shape[1], length - other.mask.shape[1]
        for a, b in zip(mine, theirs, strict=True):
            a.keys = torch.cat([_pad_kv(a.keys, pad_mine), _pad_kv(b.keys, pad_theirs)])
            a.values = torch.cat([_pad_kv(a.values, pad_mine), _pad_kv(b.values, pad_theirs)])
        self.mask = torch.cat(
            [functional.pad(self.mask, (pad_mine, 0)), functional.pad(other.mask, (pad_theirs, 0))]
        )

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices``; drop the columns that are padding in all."""
        index = torch.tensor(indices, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        layers = self.layers(self.cache)
        if layers is None:
            # Another kind of cache: transformers selects its rows (as for beam search).
            self.cache.batch_select_indices(index)
            return
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self.mask.shape[1]
        self.mask = self.mask[:, start:]
        for layer in layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]


def _pad_kv(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    # [rows, heads, length, head_dim]: pad the length dimension on the left.
    return functional.pad(tensor, (0, 0, columns, 0)) if columns else tensor


class StepBatcher:
    """Runs ``model`` over every submitted row until each finishes.

    ``lock`` is held for each step (the engine holds it to load or delete adapters, so no
    forward pass ever sees a half-changed model); ``on_row_end`` is called with it held when a
    row leaves the batch (finished, cancelled or failed)."""

    def __init__(
        self,
        model: StepModel,
        *,
        lock: threading.Lock | threading.RLock,
        eos_token_ids: frozenset[int],
        on_row_end: Callable[[Row], None],
        on_forward: Callable[[int, int], None] | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
        pad_token_id: int = 0,
    ) -> None:
        self._model = model
        self._lock = lock
        self._eos = eos_token_ids
        self._on_row_end = on_row_end
        self._on_forward = on_forward
        self.max_rows = max_rows
        self.max_prefill_tokens = max_prefill_tokens
        self._pad = pad_token_id
        self._pending: deque[Row] = deque()
        self._wake = threading.Condition()
        self._rows: list[Row] = []
        self._kv: KVBatch | None = None
        self._mergeable = True
        self._closed = False
        self.stats = BatchStats()
        self._thread = threading.Thread(
            target=self._run, name="lorafleet-peft-batcher", daemon=True
        )

    # ----------------------------------------------------------------- outside the thread
    def start(self) -> None:
        self._thread.start()

    def submit(self, row: Row) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is shut down")
            self._pending.append(row)
            self._wake.notify()

    def cancel(self, row: Row) -> None:
        """Stop generating for ``row`` (its client went away); it leaves at the next step."""
        row.cancelled = True
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def in_flight(self) -> int:
        return len(self._rows) + len(self._pending)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    # ----------------------------------------------------------------- the loop
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._pending and not self._rows:
                    self._wake.wait()
                if self._closed:
                    break
                admitted, dropped = self._admit()
            with self._lock:
                for row in dropped:
                    self._end(row, None)
                try:
                    self._step(admitted)
                except Exception as err:  # fail the rows, keep serving
                    log.exception("Failed a batch of %d rows", len(self._rows) + len(admitted))
                    for row in [*self._rows, *admitted]:
                        self._end(row, RowEvent((), "", "abort", error=str(err)))
                    self._rows, self._kv = [], None
        with self._lock:
            for row in [*self._rows, *self._pending]:
                self._end(row, RowEvent((), "", "abort", error="the engine shut down"))
            self._rows, self._kv = [], None
            self._pending.clear()

    def _admit(self) -> tuple[list[Row], list[Row]]:
        """Pending rows that join now, and the ones cancelled before they started (called
        with ``_wake`` held)."""
        if not self._mergeable and self._rows:
            return [], []  # cohort mode: wait for the running batch to finish
        admitted: list[Row] = []
        dropped: list[Row] = []
        tokens = 0
        while self._pending and len(self._rows) + len(admitted) < self.max_rows:
            row = self._pending[0]
            if admitted and tokens + len(row.prompt) > self.max_prefill_tokens:
                break
            self._pending.popleft()
            if row.cancelled:
                dropped.append(row)
                continue
            admitted.append(row)
            tokens += len(row.prompt)
        return admitted, dropped

    def _step(self, admitted: list[Row]) -> None:
        started = time.perf_counter()
        self._drop_cancelled()
        if admitted:
            self._prefill(admitted)
        if self._rows:
            self._decode()
        self.stats.step_seconds += time.perf_counter() - started

    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        rows: list[Row],
        prefill: bool,
    ) -> tuple[list[int], Any]:
        adapters = [row.adapter for row in rows]
        started = time.perf_counter()
        logits, cache = self._model.forward(input_ids, mask, positions, cache, adapters)
        self.stats.forward_seconds += time.perf_counter() - started
        distinct = self.stats.record(len(rows), adapters, prefill)
        if self._on_forward is not None:
            self._on_forward(len(rows), distinct)
        params = [row.params for row in rows]
        return next_tokens(logits, params, [row.generator for row in rows]), cache

    def _prefill(self, rows: list[Row]) -> None:
        device = self._model.device
        length = max(len(row.prompt) for row in rows)
        input_ids = torch.full((len(rows), length), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, length - len(row.prompt) :] = torch.tensor(row.prompt)
            mask[i, length - len(row.prompt) :] = 1
            row.position = len(row.prompt)
            row.generator = row.params.generator(device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
        tokens, cache = self._forward(input_ids, mask, positions, None, rows, prefill=True)
        kv = KVBatch(cache, mask)
        self._mergeable = self._mergeable and KVBatch.layers(cache) is not None
        for row, token in zip(rows, tokens, strict=True):
            self._advance(row, token)
        alive = [i for i, row in enumerate(rows) if not row.done]
        if not alive:
            return
        if len(alive) < len(rows):
            kv.keep(alive)
        if self._kv is None or not self._rows:
            self._kv = kv
        else:
            self._kv.append(kv)
        self._rows.extend(rows[i] for i in alive)

    def _decode(self) -> None:
        kv = self._kv
        assert kv is not None
        device = self._model.device
        rows = self._rows
        input_ids = torch.tensor([[row.tokens[-1]] for row in rows], device=device)
        positions = torch.tensor([[row.position] for row in rows], device=device)
        kv.mask = functional.pad(kv.mask, (0, 1), value=1)
        tokens, kv.cache = self._forward(input_ids, kv.mask, positions, kv.cache, rows, False)
        for row, token in zip(rows, tokens, strict=True):
            row.position += 1
            self._advance(row, token)
        self._compact()

    def _drop_cancelled(self) -> None:
        if any(row.cancelled for row in self._rows):
            for row in self._rows:
                if row.cancelled and not row.done:
                    self._end(row, None)
            self._compact()

    def _compact(self) -> None:
        alive = [i for i, row in enumerate(self._rows) if not row.done]
        if len(alive) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in alive]
        if not self._rows:
            self._kv = None
        elif self._kv is not None:
            self._kv.keep(alive)

    # ----------------------------------------------------------------- one token
    def _advance(self, row: Row, token: int) -> None:
        row.tokens.append(token)
        params = row.params
        finish: FinishReason | None = None
        stop_reason: str | int | None = None
        if token in params.stop_token_ids:
            finish, stop_reason = "stop", token
            text = ""
        elif token in self._eos and not params.ignore_eos:
            finish = "stop"
            text = ""
        else:
            text = row.text.push(token)
            if row.text.stopped:
                finish, stop_reason = "stop", row.text.stop_reason
        if finish is None and len(row.tokens) >= params.max_tokens:
            finish = "length"
        if finish is None:
            if row.stream:
                row.emit(RowEvent((token,), text))
            return
        if not row.text.stopped:
            text += row.text.finish()
        if not row.stream:
            text, token_ids = row.text.text, tuple(row.tokens)
        else:
            token_ids = (token,)
        self._end(row, RowEvent(token_ids, text, finish, stop_reason))

    def _end(self, row: Row, event: RowEvent | None) -> None:
        if row.done:
            return
        row.done = True
        self.stats.rows_finished += 1
        try:
            if event is not None:
                row.emit(event)
        finally:
            self._on_row_end(row)
