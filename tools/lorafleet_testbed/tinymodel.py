"""A tiny Qwen2 model and real PEFT LoRA adapters for it, generated offline in seconds.

Nothing is downloaded: the tokenizer is trained on a few sentences, the weights are random
with a fixed seed. The shape follows FACTS.md (head_dim 64, which vLLM's CPU attention
accepts), so the runtime tests can serve the same model. Needs the ``models`` extra."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Final

from lorafleet_api.names import ADAPTERCATALOG_KIND, API_GROUP_VERSION

TINY_MODEL_ID: Final = "lorafleet/tiny-qwen2"
_SENTENCES: Final = (
    "lorafleet serves one base model with many LoRA adapters.",
    "The quick brown fox jumps over the lazy dog.",
    "Adapters are small: a rank r update of a few projection matrices.",
    "Kubernetes operators reconcile what is desired with what is observed.",
)
_CHAT_TEMPLATE: Final = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# examples/lora-model.yaml's maxModelLen fits. Rotary positions: the context length costs no
# weights, only vLLM's KV cache (1 KiB per token for this model).
MAX_POSITIONS: Final = 4096


def build_tiny_model(directory: Path) -> Path:
    """Save the tiny base model (config, safetensors weights, tokenizer) in ``directory``;
    reuse it when it is already there (and made by this version of the recipe)."""
    config_path = directory / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        if config.get("max_position_embeddings") == MAX_POSITIONS:
            return directory
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_model = Tokenizer(models.BPE())
    tokenizer_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer_model.train_from_iterator(list(_SENTENCES), trainer=trainer)
    fast_tokenizer: Any = PreTrainedTokenizerFast
    tokenizer = fast_tokenizer(
        tokenizer_object=tokenizer_model, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        eos_token_id=0,
        bos_token_id=0,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_lora_adapter(
    base_dir: Path,
    directory: Path,
    *,
    seed: int,
    rank: int = 8,
    base_model_name: str = TINY_MODEL_ID,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    modules_to_save: tuple[str, ...] = (),
    use_dora: bool = False,
) -> Path:
    """Save a real PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) for
    the tiny model in ``directory``. ``init_lora_weights=False`` gives random B matrices, so
    each adapter visibly changes the output. A module in ``modules_to_save`` (e.g. lm_head)
    gets noise added to its copy, so rows using it cannot pass for the base model's."""
    if (directory / "adapter_config.json").exists():
        return directory
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    base = Qwen2ForCausalLM.from_pretrained(base_dir)
    with warnings.catch_warnings():
        # peft calls a transformers API that transformers 5 deprecates; nothing to act on.
        warnings.simplefilter("ignore", FutureWarning)
        peft_model: Any = get_peft_model(
            base,
            LoraConfig(
                r=rank,
                lora_alpha=2 * rank,
                target_modules=list(target_modules),
                modules_to_save=list(modules_to_save) or None,
                use_dora=use_dora,
                init_lora_weights=False,
            ),
        )
    with torch.no_grad():
        for name in modules_to_save:
            copy = getattr(peft_model.base_model.model, name).modules_to_save["default"]
            copy.weight.add_(torch.randn_like(copy.weight) * 0.5)
    peft_model.save_pretrained(directory, safe_serialization=True)
    # The base model was loaded from a temporary path; name it as users would.
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model_name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


# Adapter names and seeds of the local stand-in for examples/adapter-catalog.yaml.
EXAMPLE_ADAPTERS: Final = {"support-v1": 1, "support-v2": 2, "billing": 3}
EXAMPLE_CATALOG: Final = "support-adapters"


def build_example_stand_in(directory: Path) -> tuple[Path, Path]:
    """What ``lorafleet serve -f examples/lora-model.yaml`` needs on a machine without the
    real model or bucket: the tiny model in ``directory/base``, a few adapters for it in
    ``directory/adapters`` and an AdapterCatalog YAML named like the example's catalog that
    points at that folder. Returns (base model folder, catalog YAML)."""
    import yaml

    base = build_tiny_model(directory / "base")
    adapters = directory / "adapters"
    for name, seed in EXAMPLE_ADAPTERS.items():
        build_lora_adapter(base, adapters / name, seed=seed)
    catalog = {
        "apiVersion": API_GROUP_VERSION,
        "kind": ADAPTERCATALOG_KIND,
        "metadata": {"name": EXAMPLE_CATALOG},
        "spec": {
            "source": {"uri": f"file://{adapters.resolve()}"},
            "baseModel": TINY_MODEL_ID,
        },
    }
    catalog_path = directory / "adapter-catalog.yaml"
    catalog_path.write_text(
        "# Written by `python -m lorafleet_testbed tiny-model`: a local stand-in for the\n"
        "# example's S3 catalog, with adapters for the tiny model.\n" + yaml.safe_dump(catalog)
    )
    return base, catalog_path
