"""Per-request sampling and stopping, independent of how rows are batched. No Ray, no PEFT.

- ``SamplingParams``: what one request asked for (OpenAI's ``max_tokens``, ``temperature``,
  ``top_p``, ``stop``, ``seed`` and vLLM's ``ignore_eos``, ``stop_token_ids``,
  ``include_stop_str_in_output``, ``skip_special_tokens``).
- ``next_tokens``: one token per batch row from that row's logits. Greedy rows
  (temperature 0) take the argmax; sampled rows draw from their own ``torch.Generator``, so
  a seeded request gives the same tokens whatever else shares its batch.
- ``TextStream``: incremental detokenization and stop strings: text is released as soon as no
  stop string can still begin in it, and a matched stop string ends the sequence (cut from the
  text unless ``include_stop_str_in_output``), as vLLM does."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import torch

FinishReason = Literal["stop", "length", "abort"]
# Below this temperature a request is greedy (vLLM's _SAMPLING_EPS is the same idea).
GREEDY_BELOW: Final = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The row's random source: seeded when the request says so, else fresh."""
        if self.greedy:
            return None
        generator = torch.Generator(device=device)
        seed = self.seed if self.seed is not None else secrets.randbits(63)
        generator.manual_seed(seed % 2**63)
        return generator


def next_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """One token per row of ``logits`` ([rows, vocab])."""
    chosen = logits.argmax(dim=-1).tolist()
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            continue
        chosen[row] = _sample(logits[row].float(), p, generator)
    return [int(t) for t in chosen]


def _sample(logits: torch.Tensor, params: SamplingParams, generator: Any) -> int:
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


class TextStream:
    """The text of one sequence, released piece by piece.

    Detokenization is incremental (a window of recent tokens is decoded, not the whole
    sequence): a token that completes a multi-byte character is released with it, never as
    a replacement character. With ``incremental=False`` (a request that is not streamed and
    has no stop strings) nothing is decoded until ``finish``: one decode per sequence."""

    def __init__(self, tokenizer: Any, params: SamplingParams, *, incremental: bool = True) -> None:
        self._tokenizer = tokenizer
        self._params = params
        self._incremental = incremental or bool(params.stop)
        self._tokens: list[int] = []
        self._prefix = 0  # decoding starts here (context for the tokens after read)
        self._read = 0  # tokens before this are in self._text
        self._text = ""  # all text decoded so far
        self._released = 0  # characters of self._text handed out
        self._hold = max((len(s) for s in params.stop), default=1) - 1
        self.stop_reason: str | int | None = None

    def push(self, token: int) -> str:
        """Add a generated token; returns the text that became final with it."""
        self._tokens.append(token)
        if not self._incremental:
            return ""
        decode = self._tokenizer.decode
        skip = self._params.skip_special_tokens
        before = decode(self._tokens[self._prefix : self._read], skip_special_tokens=skip)
        after = decode(self._tokens[self._prefix :], skip_special_tokens=skip)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            searched_from = max(0, len(self._text) - self._hold)
            self._text += after[len(before) :]
            self._prefix, self._read = self._read, len(self._tokens)
            if self._params.stop and self._match_stop(searched_from):
                return self._release(len(self._text))
        return self._release(len(self._text) - self._hold)

    def _match_stop(self, start: int) -> bool:
        found: tuple[int, str] | None = None
        for stop in self._params.stop:
            at = self._text.find(stop, start)
            if at != -1 and (found is None or at < found[0]):
                found = (at, stop)
        if found is None:
            return False
        at, stop = found
        self._text = self._text[: at + len(stop) if self._params.include_stop_str_in_output else at]
        self.stop_reason = stop
        return True

    def finish(self) -> str:
        """The text still held back (the sequence ended without a stop string)."""
        if not self._incremental:
            self._text = self._tokenizer.decode(
                self._tokens, skip_special_tokens=self._params.skip_special_tokens
            )
        return self._release(len(self._text))

    def _release(self, upto: int) -> str:
        upto = min(upto, len(self._text))
        if upto <= self._released:
            return ""
        piece = self._text[self._released : upto]
        self._released = upto
        return piece

    @property
    def text(self) -> str:
        return self._text[: self._released]

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None
