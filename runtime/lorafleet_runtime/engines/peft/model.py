"""The base model and its adapters in one ``PeftModel``, and a forward pass whose rows each use
another adapter (PEFT's mixed-adapter batches). No Ray.

Mixed batches (PEFT 0.21): every LoRA layer and every ``modules_to_save`` wrapper takes
``adapter_names`` (one per row; ``"__base__"`` for the base model) in its forward and applies
each adapter to its rows only. ``PeftModel.forward(adapter_names=...)`` passes the same list to
all of them, and a ``ModulesToSaveWrapper`` then looks up every name in its own copies, so a
batch that mixes an adapter with ``modules_to_save=["lm_head"]`` and one without fails with a
KeyError (the wrapper holds no copy for the second). Here each wrapper gets the list with the
names it holds no copy for replaced by ``"__base__"`` (its original module: what that adapter
uses), through forward pre-hooks registered for the one forward pass, as PEFT registers its
own. PEFT refuses mixed batches for DoRA and for LoRA on ``nn.MultiheadAttention``; such
adapters are refused at load (``AdapterRejectedError``), as are non-LoRA adapters and options
that change the forward pass itself (aLoRA, target_parameters, layer_replication).

Deleting an adapter (``PeftModel.delete_adapter``) removes its tensors from every layer; after
it nothing references them (tests hold weak references to check), so the memory is freed."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import torch

from lorafleet_runtime.engines.peft.batcher import BASE

log = logging.getLogger("lorafleet.peft")

# The contract's dtype vocabulary (vLLM's) -> torch.
DTYPES: Final[dict[str, torch.dtype | str]] = {
    "auto": "auto",
    "half": torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float": torch.float32,
    "float32": torch.float32,
}


class AdapterRejectedError(ValueError):
    """The adapter's files are fine but this engine cannot serve it (the message says why)."""


def check_servable(config: dict[str, Any]) -> None:
    """Refuse what a mixed-adapter batch cannot run (the adapter_config.json as a dict)."""
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterRejectedError(f"peft_type {config.get('peft_type')!r}: only LoRA is served")
    if config.get("use_dora"):
        raise AdapterRejectedError("use_dora is set: PEFT cannot run DoRA in mixed-adapter batches")
    for option in ("target_parameters", "alora_invocation_tokens", "layer_replication"):
        if config.get(option):
            raise AdapterRejectedError(f"{option} is set: not supported in mixed-adapter batches")


class PeftStepModel:
    """``StepModel`` over a transformers causal LM with PEFT LoRA adapters."""

    def __init__(self, source: str | Path, *, dtype: str = "auto", device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(source)
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype])
        self.base: Any = model.to(self.device).eval()
        self.peft: Any = None  # the PeftModel, made when the first adapter loads
        self._tuners: list[Any] = []
        self.base_bytes = self.parameter_bytes()

    # ----------------------------------------------------------------- facts
    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def max_positions(self) -> int | None:
        value = getattr(self.config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None

    def eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.base.generation_config, self.config):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(int(v) for v in value)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    def adapters(self) -> list[str]:
        """Adapter names the PeftModel holds (its ``peft_config`` keys)."""
        return sorted(self.peft.peft_config) if self.peft is not None else []

    def parameter_bytes(self) -> int:
        module = self.peft if self.peft is not None else self.base
        return sum(p.numel() * p.element_size() for p in module.parameters())

    # ----------------------------------------------------------------- adapters
    def load_adapter(self, name: str, path: Path) -> None:
        """Add the adapter in ``path`` under ``name`` (AdapterRejectedError: not servable)."""
        config = json.loads((path / "adapter_config.json").read_text())
        check_servable(config)
        from peft import PeftModel

        try:
            with warnings.catch_warnings():
                # PEFT warns about tied embeddings and deprecated transformers calls; the
                # outputs are checked by the tests instead.
                warnings.simplefilter("ignore")
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(
                        self.base, path, adapter_name=name, is_trainable=False
                    )
                else:
                    self.peft.load_adapter(path, adapter_name=name, is_trainable=False)
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            # Weights that do not fit this base model (other shapes, other module names).
            if self.peft is not None and name in self.peft.peft_config:
                self.delete_adapter(name)
            raise AdapterRejectedError(f"PEFT could not load the adapter: {err}") from None
        self.peft.eval()
        self._refresh_tuners()
        if self._on_attention_modules(name):
            self.delete_adapter(name)
            raise AdapterRejectedError(
                "the adapter targets nn.MultiheadAttention, which PEFT cannot run in "
                "mixed-adapter batches"
            )

    def delete_adapter(self, name: str) -> None:
        if self.peft is None or name not in self.peft.peft_config:
            return
        with warnings.catch_warnings():
            # PEFT warns when the "active" adapter goes; rows name their adapters instead.
            warnings.simplefilter("ignore", UserWarning)
            self.peft.delete_adapter(name)
        self._refresh_tuners()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _on_attention_modules(self, name: str) -> bool:
        from peft.tuners.lora.layer import MultiheadAttention

        return any(isinstance(m, MultiheadAttention) and name in m.lora_A for m in self._tuners)

    def _refresh_tuners(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        self._tuners = [
            m
            for m in self.peft.modules()
            if isinstance(m, BaseTunerLayer | AuxiliaryTrainingWrapper)
        ]

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
        adapters: Sequence[str],
    ) -> tuple[torch.Tensor, Any]:
        if cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.config)
        module = self.peft if self.peft is not None else self.base
        with torch.inference_mode(), self._row_adapters(list(adapters)):
            out = module(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :], out.past_key_values

    @contextlib.contextmanager
    def _row_adapters(self, names: list[str]) -> Iterator[None]:
        """Every adapter layer gets ``names`` (its own version of it) for this forward pass."""
        from peft.utils.other import ModulesToSaveWrapper

        handles = []
        try:
            for module in self._tuners:
                if isinstance(module, ModulesToSaveWrapper):
                    held = module.modules_to_save
                    own = [n if n in held else BASE for n in names]
                else:
                    own = names
                handles.append(
                    module.register_forward_pre_hook(_adapter_names_hook(own), with_kwargs=True)
                )
            yield
        finally:
            for handle in handles:
                handle.remove()


def _adapter_names_hook(names: list[str]) -> Any:
    def hook(
        module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs["adapter_names"] = names
        return args, kwargs

    return hook
