"""Is an adapter folder a LoRA adapter some engine could serve? Each failure has a one-word
reason and a message.

Checks run in a fixed order and the first failure decides, so an adapter has exactly one
reason and re-syncs report it the same way. Invalid adapters stay in the index (with the
reason) but are never offered for serving.

What only some engines can serve is valid here and recorded (``modules_to_save``, DoRA as
``variant``, ``rank_pattern``/``alpha_pattern``); ``lorafleet_api.adapter_support`` decides per
engine, so one catalog can feed a vLLM model and a PEFT model."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Final, cast

from lorafleet_api.adapter_files import (
    MAX_CONFIG_BYTES,
    SAFETENSORS_FILE,
    WEIGHT_FILES,
    config_too_large,
    parse_config,
    safetensors_problem,
)
from lorafleet_api.adapter_support import VARIANT_DORA
from lorafleet_api.catalog_index import AdapterFile, AdapterRecord
from lorafleet_api.naming import invalid_adapter_name_reason, same_base_model
from lorafleet_operator.adapters.listing import CONFIG_FILE, LINK_OUTSIDE, AdapterFolder

# MAX_CONFIG_BYTES is re-exported: the scan never reads more of a config (lorafleet_api's
# adapter_files holds the limit for both sides).
__all__ = ["MAX_CONFIG_BYTES", "REASONS", "refuse_name_clashes", "validate_adapter"]

NAME_CLASH: Final = "NameClash"

REASONS: Final[dict[str, str]] = {
    "NameInvalid": "the folder name cannot be used in <modelId>:<adapter>",
    NAME_CLASH: "another folder of the catalog has the same name but for case",
    "Symlink": "a file:// catalog's adapter folder is or holds a symbolic link",
    "TooLarge": "the folder's files add up to more than spec.maxAdapterSize",
    "Nested": "adapter files are in a deeper subfolder, not at the top of the adapter folder",
    "ConfigMissing": "no adapter_config.json",
    "ConfigTooLarge": "adapter_config.json is larger than 1 MiB",
    "ConfigUnreadable": "adapter_config.json was listed but could not be read",
    "ConfigNotJson": "adapter_config.json is not valid JSON",
    "ConfigNotObject": "adapter_config.json is JSON but not an object",
    "NotLora": "peft_type is not LORA",
    "RankMissing": "no rank (r)",
    "RankInvalid": "the rank (r) is not a positive integer",
    "AlphaInvalid": "lora_alpha is not a positive number",
    "TargetModulesMissing": "target_modules is missing or empty",
    "WeightsMissing": "no adapter_model.safetensors or adapter_model.bin",
    "WeightsEmpty": "the weight file is empty",
    "WeightsUnreadable": "adapter_model.safetensors was listed but could not be read",
    "WeightsNotSafetensors": "adapter_model.safetensors is not a safetensors file",
    "BaseModelMismatch": "base_model_name_or_path is not the catalog's baseModel",
}


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def validate_adapter(
    folder: AdapterFolder,
    config: bytes | None,
    *,
    folder_uri: str,
    base_model: str | None,
    max_adapter_bytes: int,
    config_unreadable: str | None = None,
    weights_head: bytes | None = None,
    weights_unreadable: str | None = None,
) -> AdapterRecord:
    """The index record of ``folder``.

    ``config`` is the content of its adapter_config.json, None when it was not read (absent,
    too large, or ``config_unreadable`` says why not). ``weights_head`` is the start of its
    adapter_model.safetensors (``SAFETENSORS_HEAD_BYTES``), checked as far as it goes; None
    when not read (then the runtime's check after the download is the only one), or
    ``weights_unreadable`` says why it could not be."""
    files = tuple(
        AdapterFile(name=name, size=stored.size) for name, stored in sorted(folder.files.items())
    )
    base: dict[str, Any] = {
        "name": folder.name,
        "uri": folder_uri,
        "revision": folder.revision,
        "files": files,
        "size_bytes": folder.size_bytes,
    }

    def invalid(reason: str, message: str, **known: Any) -> AdapterRecord:
        return AdapterRecord(valid=False, reason=reason, message=message, **base, **known)

    name_problem = invalid_adapter_name_reason(folder.name)
    if name_problem is not None:
        return invalid("NameInvalid", name_problem)
    if folder.links:
        link = folder.links[0]
        what = f"{folder.name}/{link.key}" if link.key else f"the folder {folder.name}"
        where = "outside the catalog's folder" if link.link == LINK_OUTSIDE else "in the catalog"
        return invalid(
            "Symlink",
            f"{what} is a symbolic link to a path {where}; links in a mounted catalog are "
            "never followed",
        )
    if folder.size_bytes > max_adapter_bytes:
        return invalid(
            "TooLarge",
            f"the files add up to {folder.size_bytes} bytes; the catalog allows "
            f"{max_adapter_bytes} (spec.maxAdapterSize)",
        )
    config_file = folder.files.get(CONFIG_FILE)
    if config_file is None:
        nested_configs = [p for p in folder.nested if p.rsplit("/", 1)[-1] == CONFIG_FILE]
        if nested_configs:
            return invalid(
                "Nested",
                f"found {nested_configs[0]} in a subfolder; each adapter must be an immediate "
                "subfolder of the catalog with adapter_config.json at its top",
            )
        return invalid("ConfigMissing", f"no {CONFIG_FILE} in the folder")
    too_large = config_too_large(config_file.size)
    if too_large is not None:
        return invalid("ConfigTooLarge", too_large)
    if config is None:
        return invalid("ConfigUnreadable", config_unreadable or f"{CONFIG_FILE} was not read")
    too_large = config_too_large(len(config))  # rewritten larger since the listing
    if too_large is not None:
        return invalid("ConfigTooLarge", too_large)
    parsed, not_json = parse_config(config)
    if not_json is not None:
        return invalid("ConfigNotJson", not_json)
    if not isinstance(parsed, dict):
        return invalid("ConfigNotObject", f"{CONFIG_FILE} holds a {type(parsed).__name__}")

    peft_type = parsed.get("peft_type")
    rank = parsed.get("r")
    alpha = parsed.get("lora_alpha")
    targets = parsed.get("target_modules")
    adapter_base = parsed.get("base_model_name_or_path")
    known: dict[str, Any] = {
        "peft_type": str(peft_type) if peft_type is not None else None,
        "base_model": str(adapter_base) if isinstance(adapter_base, str) else None,
    }
    if isinstance(targets, str):
        known["target_modules"] = (targets,)
    elif isinstance(targets, list):
        # PEFT writes a set as a list in any order; sorted keeps the index byte-stable.
        known["target_modules"] = tuple(sorted(str(t) for t in targets))
    if _positive_number(alpha):
        known["alpha"] = float(cast(float, alpha))

    if str(peft_type).upper() != "LORA":
        return invalid("NotLora", f"peft_type is {peft_type!r}; only LORA adapters can be served")
    if rank is None:
        return invalid("RankMissing", f"{CONFIG_FILE} has no rank (r)", **known)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        return invalid("RankInvalid", f"rank r={rank!r} is not a positive integer", **known)
    known["rank"] = rank
    if alpha is not None and not _positive_number(alpha):
        return invalid("AlphaInvalid", f"lora_alpha={alpha!r} is not a positive number", **known)
    if not known.get("target_modules"):
        return invalid("TargetModulesMissing", "target_modules is missing or empty", **known)
    modules_to_save = parsed.get("modules_to_save")
    if isinstance(modules_to_save, str):
        known["modules_to_save"] = (modules_to_save,)
    elif isinstance(modules_to_save, list):
        known["modules_to_save"] = tuple(sorted(str(m) for m in modules_to_save))
    if parsed.get("use_dora"):
        known["variant"] = VARIANT_DORA
    if parsed.get("rank_pattern") or parsed.get("alpha_pattern"):
        known["rank_pattern"] = True
    weights = [name for name in WEIGHT_FILES if name in folder.files]
    if not weights:
        return invalid(
            "WeightsMissing", "no adapter_model.safetensors or adapter_model.bin", **known
        )
    if all(folder.files[name].size == 0 for name in weights):
        return invalid("WeightsEmpty", f"{weights[0]} is empty (0 bytes)", **known)
    safetensors = folder.files.get(SAFETENSORS_FILE)
    if safetensors is not None and safetensors.size > 0:
        if weights_unreadable is not None:
            return invalid("WeightsUnreadable", weights_unreadable, **known)
        problem = (
            safetensors_problem(weights_head, safetensors.size)
            if weights_head is not None
            else None
        )
        if problem is not None:
            return invalid("WeightsNotSafetensors", problem, **known)
    if base_model is not None and (
        adapter_base is None or not same_base_model(base_model, str(adapter_base))
    ):
        return invalid(
            "BaseModelMismatch",
            f"the adapter was trained on {adapter_base!r}; the catalog serves {base_model!r}",
            **known,
        )
    return AdapterRecord(valid=True, **base, **known)


def refuse_name_clashes(records: Iterable[AdapterRecord]) -> list[AdapterRecord]:
    """``records`` with every adapter whose name equals another's but for case ("Billing" and
    "billing") made invalid (NameClash), all of them: which one a client meant by
    ``<modelId>:billing`` is not for the listing order to decide, and case-insensitive disks
    would hold one folder for both. Checked right after NameInvalid (a name that is invalid
    anyway keeps that reason and clashes with nothing)."""
    records = list(records)
    groups: defaultdict[str, list[str]] = defaultdict(list)
    for record in records:
        if record.reason != "NameInvalid":
            groups[record.name.casefold()].append(record.name)
    result = []
    for record in records:
        names = groups.get(record.name.casefold(), [])
        if record.reason == "NameInvalid" or len(names) < 2:
            result.append(record)
            continue
        others = ", ".join(repr(n) for n in sorted(names) if n != record.name)
        result.append(
            record.model_copy(
                update={
                    "valid": False,
                    "reason": NAME_CLASH,
                    "message": f"the catalog also has {others}; adapter names that differ only "
                    "by case are refused (rename all but one)",
                }
            )
        )
    return result
