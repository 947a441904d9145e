"""The PEFT engine: one base model, adapters loaded into one PeftModel, every request a row of
the step-level batch (``batcher``). No Ray: the Serve deployment (``server``) and the unit
tests drive the same object.

Threads: the batcher thread runs the forward passes with ``_model_lock`` held; adapter loads
and deletes take the same lock in a worker thread, so a forward pass never sees a half-loaded
adapter, and the event loop never waits on the model (submitting a request only takes the
small ``_slots_lock``). Events reach the request's coroutine through its ``Generation``'s
inbox: the batcher thread appends and wakes the event loop only when no wake-up is pending,
and a request that is not streamed gets one event, at its end."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorafleet_runtime.core.locks import KeyedLocks
from lorafleet_runtime.engines.peft.batcher import (
    BASE,
    DEFAULT_MAX_ROWS,
    Row,
    RowEvent,
    StepBatcher,
)
from lorafleet_runtime.engines.peft.model import PeftStepModel
from lorafleet_runtime.engines.peft.sampling import SamplingParams, TextStream
from lorafleet_runtime.engines.peft.slots import AdapterSlots

log = logging.getLogger("lorafleet.peft")


class InvalidRequestError(ValueError):
    """A request this engine answers with 400 (vLLM's BadRequestError for the same input)."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class AdapterNotLoadedError(LookupError):
    """A request named an adapter the engine does not hold (the server loads it first)."""


@dataclass(frozen=True)
class Completion:
    """One finished sequence (the non-streaming result)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    stop_reason: str | int | None


class PeftEngine:
    def __init__(
        self,
        model: PeftStepModel,
        *,
        max_loras: int,
        max_model_len: int | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        on_forward: Callable[[int, int], None] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        limit = max_model_len or model.max_positions
        if limit is None:
            raise ValueError("max_model_len is not set and the model config names no limit")
        self.max_model_len = limit
        self._model_lock = threading.RLock()
        self._slots_lock = threading.Lock()
        self._slots = AdapterSlots(max_loras)
        self._paths: dict[str, Path] = {}  # model id -> the folder it was loaded from
        self._load_locks = KeyedLocks()
        pad = self.tokenizer.pad_token_id
        self._batcher = StepBatcher(
            model,
            lock=self._model_lock,
            eos_token_ids=model.eos_token_ids(),
            on_row_end=self._row_ended,
            on_forward=on_forward,
            max_rows=max_rows,
            pad_token_id=int(pad) if pad is not None else 0,
        )
        self.loads = 0
        self.deletes = 0

    @classmethod
    def from_pretrained(
        cls, source: str | Path, *, dtype: str = "auto", device: str = "cpu", **kwargs: Any
    ) -> PeftEngine:
        return cls(PeftStepModel(source, dtype=dtype, device=device), **kwargs)

    def start(self) -> None:
        self._batcher.start()

    def shutdown(self) -> None:
        self._batcher.close()

    def check(self) -> None:
        """Raise if the engine cannot serve (its batcher thread is gone)."""
        if not self._batcher.alive:
            raise RuntimeError("the peft engine's batcher thread is not running")

    # ----------------------------------------------------------------- prompts
    def encode(self, prompt: str | Sequence[int], *, special_tokens: bool = True) -> list[int]:
        if isinstance(prompt, str):
            ids: list[int] = self.tokenizer(prompt, add_special_tokens=special_tokens)["input_ids"]
            return list(ids)
        return [int(t) for t in prompt]

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """The base model's chat template over ``messages`` (text parts joined)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequestError("the base model's tokenizer has no chat template")
        plain = [
            {"role": str(m.get("role")), "content": _text_of(m.get("content"))} for m in messages
        ]
        text = self.tokenizer.apply_chat_template(
            plain,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **dict(template_kwargs or {}),
        )
        return self.encode(str(text), special_tokens=False)

    def max_tokens_for(self, prompt_length: int, max_tokens: int | None) -> int:
        """``max_tokens`` bounded by the context (vLLM's rules and messages): a prompt or a
        ``max_tokens`` longer than ``max_model_len`` is refused, a sum longer is clamped."""
        limit = self.max_model_len
        if max_tokens is not None and max_tokens > limit:
            raise InvalidRequestError(
                f"max_tokens={max_tokens} cannot be greater than max_model_len={limit}. "
                "Please request fewer output tokens.",
                "max_tokens",
            )
        if prompt_length >= limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"prompt contains {prompt_length} input tokens, which exceeds this limit even "
                "without any output tokens. Please reduce the length of the input prompt.",
                "input_tokens",
            )
        room = limit - prompt_length
        return room if max_tokens is None else min(max_tokens, room)

    # ----------------------------------------------------------------- adapters
    async def load_adapter(self, model_id: str, path: Path) -> None:
        """Load the adapter in ``path`` for ``model_id`` (once, however many ask at once; a
        different folder replaces the weights under a new engine name)."""
        async with self._load_locks.hold(model_id):
            if self._paths.get(model_id) == path and self.lookup(model_id) is not None:
                return
            await asyncio.to_thread(self._load, model_id, path)
            self._paths[model_id] = path

    def _load(self, model_id: str, path: Path) -> None:
        with self._model_lock:
            with self._slots_lock:
                freed = self._slots.make_room(model_id)
                name = self._slots.new_name()
            self._delete(freed)
            self.model.load_adapter(name, path)
            self.loads += 1
            with self._slots_lock:
                freed = self._slots.add(model_id, name)
            self._delete(freed)
        log.info("Loaded adapter %s as %s", model_id, name)

    async def remove_adapter(self, model_id: str) -> bool:
        """Unmap ``model_id``; its weights leave memory now, or when its last row ends."""
        async with self._load_locks.hold(model_id):
            with self._slots_lock:
                known = self._slots.lookup(model_id) is not None
                freed = self._slots.remove(model_id)
            self._paths.pop(model_id, None)
            if freed:
                await asyncio.to_thread(self._delete_locked, freed)
            return known

    def _delete_locked(self, names: list[str]) -> None:
        with self._model_lock:
            self._delete(names)

    def _delete(self, names: list[str]) -> None:
        for name in names:
            self.model.delete_adapter(name)
            self.deletes += 1
            log.info("Deleted adapter %s from the PeftModel", name)

    def lookup(self, model_id: str) -> str | None:
        with self._slots_lock:
            return self._slots.lookup(model_id)

    def loaded(self) -> dict[str, str]:
        """Model id -> engine name of every adapter new requests can use."""
        with self._slots_lock:
            return self._slots.mapped()

    # ----------------------------------------------------------------- generation
    def submit(
        self,
        prompt: list[int],
        model_id: str | None,
        params: SamplingParams,
        emit: Callable[[RowEvent], None],
        *,
        stream: bool = True,
    ) -> Row:
        """Start one sequence (``model_id`` None: the base model); ``emit`` is called from
        the batcher thread with each event. Without ``stream`` there is one event, at the
        end, and the text is decoded once (unless stop strings need it earlier)."""
        if not prompt:
            raise InvalidRequestError("the prompt is empty", "prompt")
        name = BASE
        with self._slots_lock:
            if model_id is not None:
                found = self._slots.lookup(model_id)
                if found is None:
                    raise AdapterNotLoadedError(f"adapter {model_id!r} is not loaded")
                name = found
                self._slots.acquire(name)
        row = Row(
            prompt=prompt,
            adapter=name,
            params=params,
            text=TextStream(self.tokenizer, params, incremental=stream),
            emit=emit,
            stream=stream,
        )
        try:
            self._batcher.submit(row)
        except RuntimeError:
            self._row_ended(row)
            raise
        return row

    def begin(
        self,
        prompts: Sequence[list[int]],
        model_id: str | None,
        params: SamplingParams,
        *,
        stream: bool = True,
    ) -> Generation:
        """Submit one row per prompt now (AdapterNotLoadedError before anything runs);
        read the events with ``Generation.events``."""
        generation = Generation(self._batcher, asyncio.get_running_loop())
        try:
            for index, prompt in enumerate(prompts):
                emit = functools.partial(generation.inbox.put, index)
                generation.rows.append(self.submit(prompt, model_id, params, emit, stream=stream))
        except BaseException:
            generation.cancel()
            raise
        return generation

    async def complete(
        self, prompt: list[int], model_id: str | None, params: SamplingParams
    ) -> Completion:
        """One sequence to its end (tests, benchmarks)."""
        whole: RowEvent | None = None
        generation = self.begin([prompt], model_id, params, stream=False)
        try:
            async for _, event in generation.events():
                whole = event if whole is None else whole.then(event)
                if whole.error:
                    raise RuntimeError(whole.error)
                if whole.finish_reason is not None:
                    return Completion(
                        whole.text, whole.tokens, whole.finish_reason, whole.stop_reason
                    )
        finally:
            generation.cancel()
        raise RuntimeError("the sequence ended without a finish reason")

    def _row_ended(self, row: Row) -> None:
        # Usually the batcher thread, with _model_lock held: a retired adapter can go now.
        if row.adapter == BASE:
            return
        with self._slots_lock:
            freed = self._slots.release(row.adapter)
        if freed:
            self._delete_locked(freed)

    # ----------------------------------------------------------------- reports
    def stats(self) -> dict[str, Any]:
        with self._slots_lock:
            mapped = self._slots.mapped()
            in_memory = sorted(self._slots.in_memory())
        total = self.model.parameter_bytes()
        return {
            **self._batcher.stats.as_dict(),
            "adapters": mapped,
            "in_memory": in_memory,
            "peft_adapters": self.model.adapters(),
            "parameter_bytes": total,
            "adapter_bytes": total - self.model.base_bytes,
            "rows_in_flight": self._batcher.in_flight,
            "adapter_loads": self.loads,
            "adapter_deletes": self.deletes,
            "max_model_len": self.max_model_len,
            "torch_threads": torch.get_num_threads(),
        }


class Generation:
    """The rows of one request: their events, merged per row when several arrived while the
    reader was busy; ``cancel`` stops the rows that are still running (the client left)."""

    def __init__(self, batcher: StepBatcher, loop: asyncio.AbstractEventLoop) -> None:
        self._batcher = batcher
        self.inbox = _Inbox(loop)
        self.rows: list[Row] = []

    async def events(self) -> AsyncIterator[tuple[int, RowEvent]]:
        open_rows = len(self.rows)
        while open_rows:
            merged: dict[int, RowEvent] = {}
            for index, event in await self.inbox.drain():
                earlier = merged.get(index)
                merged[index] = event if earlier is None else earlier.then(event)
            for index, event in merged.items():
                if event.finish_reason is not None:
                    open_rows -= 1
                yield index, event

    def cancel(self) -> None:
        for row in self.rows:
            if not row.done:
                self._batcher.cancel(row)


class _Inbox:
    """Events from the batcher thread to one request's coroutine: the thread appends, and
    wakes the event loop only when no wake-up is pending, so a busy loop is woken once for
    many tokens instead of once per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[int, RowEvent]] = deque()
        self._ready = asyncio.Event()
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, index: int, event: RowEvent) -> None:  # the batcher thread
        self._items.append((index, event))
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        # RuntimeError: the loop is gone, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._scheduled = False
        self._ready.set()

    async def drain(self) -> list[tuple[int, RowEvent]]:
        while not self._items:
            self._ready.clear()
            if self._items:
                break
            await self._ready.wait()
        drained = []
        while self._items:
            drained.append(self._items.popleft())
        return drained


def _text_of(content: Any) -> str:
    """A chat message's content: a string, or the text of its parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        elif isinstance(part, str):
            parts.append(part)
        else:
            raise InvalidRequestError("the peft engine takes text content only", "messages")
    return "".join(parts)
