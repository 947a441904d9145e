"""What the ingress answers for an adapter before any replica sees the request. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from lorafleet_api.adapter_support import engine_refusal
from lorafleet_api.catalog_index import AdapterRecord
from lorafleet_api.contract import EngineKind
from lorafleet_api.naming import same_base_model

Outcome = Literal["servable", "unknown", "invalid", "incompatible"]

# 422: the request names an adapter that exists but can never be served as it is.
HTTP_UNPROCESSABLE: Final = 422
HTTP_NOT_FOUND: Final = 404


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str | None = None
    message: str = ""

    @property
    def http_status(self) -> int | None:
        """The error status to answer with; None when the request may go on."""
        if self.outcome == "servable":
            return None
        if self.outcome == "unknown":
            return HTTP_NOT_FOUND
        return HTTP_UNPROCESSABLE


def judge_adapter(
    name: str,
    record: AdapterRecord | None,
    *,
    max_lora_rank: int,
    base_model: str | None = None,
    engine_kind: EngineKind = "vllm",
) -> Verdict:
    """Servable, unknown, invalid (the catalog said why) or incompatible with this engine:
    refused by its kind (``adapter_support``), above ``max_lora_rank`` (vLLM only: PEFT
    loads any rank) or trained for another base model."""
    if record is None:
        return Verdict("unknown", "NotFound", f"adapter {name!r} is in none of the catalogs")
    if not record.valid:
        reason = record.reason or "Invalid"
        detail = f": {record.message}" if record.message else ""
        return Verdict("invalid", reason, f"adapter {name!r} is invalid ({reason}){detail}")
    refusal = engine_refusal(record, engine_kind)
    if refusal is not None:
        reason, message = refusal
        return Verdict(
            "incompatible",
            reason,
            f"adapter {name!r} cannot be served by this model's engine ({engine_kind}, "
            f"{reason}): {message}",
        )
    if engine_kind == "vllm" and record.rank is not None and record.rank > max_lora_rank:
        return Verdict(
            "incompatible",
            "RankTooHigh",
            f"adapter {name!r} has rank {record.rank}, above this model's max_lora_rank "
            f"{max_lora_rank}",
        )
    if base_model and record.base_model and not same_base_model(base_model, record.base_model):
        return Verdict(
            "incompatible",
            "BaseModelMismatch",
            f"adapter {name!r} was trained for {record.base_model!r}, not {base_model!r}",
        )
    return Verdict("servable")
