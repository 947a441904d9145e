"""What the operator knows of one AdapterCatalog a LoRAModel refers to."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lorafleet_api.contract import ENGINE_KINDS, EngineKind


class AdapterRank(BaseModel):
    """One valid adapter, its LoRA rank, and the engine kinds that cannot serve it (with the
    reason, ``adapter_support.engine_refusal``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    rank: int = Field(ge=1)
    refused_by: dict[EngineKind, str] = Field(default_factory=dict)


class CatalogSnapshot(BaseModel):
    """A summary of one referenced AdapterCatalog, taken from its status.

    A catalog's status never lists every adapter when there are many (etcd's object size
    limit), so counts come from the rank histogram and the per-engine counts, and ``adapters``
    may be a bounded sample: enough to name some incompatible adapters, not a full index."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    namespace: str
    found: bool
    # Adapters vLLM can serve per LoRA rank (vLLM is the engine with a rank limit).
    rank_histogram: dict[int, int] = Field(default_factory=dict)
    # Valid adapters (status.counts.valid); None: the histogram's total.
    valid: int | None = Field(default=None, ge=0)
    # Valid adapters each engine kind can serve (status.counts.servable); a kind not in it
    # gets the histogram's total (see servable_by).
    servable: dict[EngineKind, int] = Field(default_factory=dict)
    adapters: tuple[AdapterRank, ...] = ()
    # The Secret named by spec.source.credentialsSecretRef, if any (the runtime reads it).
    credentials_secret: str | None = None
    # Shard ConfigMaps of the catalog's index as of the last sync (status.index.shards);
    # 0 when not synced yet.
    index_shards: int = Field(default=0, ge=0)

    @property
    def valid_adapters(self) -> int:
        return self.valid if self.valid is not None else sum(self.rank_histogram.values())

    def servable_by(self, kind: EngineKind) -> int:
        """Valid adapters an engine of ``kind`` can serve (vLLM's rank limit aside).

        A catalog status written before engines differed has no ``counts.servable``: its
        sync marked every adapter vLLM refuses invalid, so its valid adapters, the
        histogram's total, are what each engine serves as before."""
        if kind in self.servable:
            return self.servable[kind]
        return sum(self.rank_histogram.values())

    @property
    def largest_valid_rank(self) -> int | None:
        ranks = [rank for rank, count in self.rank_histogram.items() if count > 0]
        return max(ranks, default=None)

    @classmethod
    def missing(cls, name: str, namespace: str) -> CatalogSnapshot:
        """A referenced catalog that does not exist (yet)."""
        return cls(name=name, namespace=namespace, found=False)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> CatalogSnapshot:
        """Summarise an AdapterCatalog object as read from the API server or a file.

        Reads ``status.rankHistogram`` (adapters vLLM can serve per rank; JSON keys are
        strings), ``status.counts.valid`` and ``status.counts.servable`` (valid adapters,
        and those each engine kind can serve), ``status.adapters`` (a bounded list of valid
        adapters, ``{name, rank, refusedBy}``), the index's shard count
        (``status.index.shards``) and the credentials Secret's name
        (``spec.source.credentialsSecretRef.name``). When the histogram is absent it is
        counted from the list. A catalog not synced yet (no status) is found but has no
        adapters and no shards. Malformed entries are skipped: a catalog's status must never
        stop its models from rendering."""
        metadata = obj.get("metadata") or {}
        status = obj.get("status") or {}
        if not isinstance(status, Mapping):
            status = {}
        adapters = tuple(
            AdapterRank(name=entry["name"], rank=entry["rank"], refused_by=_refused_by(entry))
            for entry in status.get("adapters") or []
            if isinstance(entry, Mapping)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("rank"), int)
            and entry["rank"] >= 1
        )
        counts = status.get("counts")
        counts = counts if isinstance(counts, Mapping) else {}
        histogram: dict[int, int] = {}
        raw_histogram = status.get("rankHistogram")
        if isinstance(raw_histogram, Mapping):
            for rank, count in raw_histogram.items():
                if str(rank).isdigit() and int(rank) >= 1 and isinstance(count, int):
                    histogram[int(rank)] = count
        else:
            histogram = dict(Counter(adapter.rank for adapter in adapters))
        return cls(
            name=str(metadata.get("name", "")),
            namespace=str(metadata.get("namespace") or "default"),
            found=True,
            rank_histogram=histogram,
            valid=_count(counts.get("valid")),
            servable=_servable(counts.get("servable")),
            adapters=adapters,
            credentials_secret=_credentials_secret(obj.get("spec")),
            index_shards=_index_shards(status.get("index")),
        )


def _count(value: Any) -> int | None:
    # bool is an int in Python; `true` is no count.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _servable(raw: Any) -> dict[EngineKind, int]:
    if not isinstance(raw, Mapping):
        return {}
    return {kind: count for kind in ENGINE_KINDS if (count := _count(raw.get(kind))) is not None}


def _refused_by(entry: Mapping[str, Any]) -> dict[EngineKind, str]:
    raw = entry.get("refusedBy")
    if not isinstance(raw, Mapping):
        return {}
    return {kind: raw[kind] for kind in ENGINE_KINDS if isinstance(raw.get(kind), str)}


def _credentials_secret(spec: Any) -> str | None:
    source = spec.get("source") if isinstance(spec, Mapping) else None
    ref = source.get("credentialsSecretRef") if isinstance(source, Mapping) else None
    name = ref.get("name") if isinstance(ref, Mapping) else None
    return name if isinstance(name, str) and name else None


def _index_shards(index: Any) -> int:
    shards = index.get("shards") if isinstance(index, Mapping) else None
    # bool is an int in Python; `true` is no shard count.
    if isinstance(shards, int) and not isinstance(shards, bool) and shards > 0:
        return shards
    return 0
