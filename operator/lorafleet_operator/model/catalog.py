"""What the operator knows of one AdapterCatalog a LoRAModel refers to."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AdapterRank(BaseModel):
    """One valid adapter and its LoRA rank."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    rank: int = Field(ge=1)


class CatalogSnapshot(BaseModel):
    """A summary of one referenced AdapterCatalog, taken from its status.

    A catalog's status never lists every adapter when there are many (etcd's object size
    limit), so counts come from the rank histogram and ``adapters`` may be a bounded sample:
    enough to name some incompatible adapters, not a full index."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    namespace: str
    found: bool
    # Valid adapters per LoRA rank (invalid adapters are never served, so never counted).
    rank_histogram: dict[int, int] = Field(default_factory=dict)
    adapters: tuple[AdapterRank, ...] = ()
    # The Secret named by spec.source.credentialsSecretRef, if any (the runtime reads it).
    credentials_secret: str | None = None
    # Shard ConfigMaps of the catalog's index as of the last sync (status.index.shards);
    # 0 when not synced yet.
    index_shards: int = Field(default=0, ge=0)

    @property
    def valid_adapters(self) -> int:
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

        Reads ``status.rankHistogram`` (valid adapters per rank; JSON keys are strings) and
        ``status.adapters`` (a bounded list of valid adapters, ``{name, rank}``), the
        index's shard count (``status.index.shards``) and the credentials Secret's name
        (``spec.source.credentialsSecretRef.name``). When the histogram is absent it is
        counted from the list. A catalog not synced yet (no status) is found but has no
        adapters and no shards. Malformed entries are skipped: a catalog's status must never
        stop its models from rendering."""
        metadata = obj.get("metadata") or {}
        status = obj.get("status") or {}
        if not isinstance(status, Mapping):
            status = {}
        adapters = tuple(
            AdapterRank(name=entry["name"], rank=entry["rank"])
            for entry in status.get("adapters") or []
            if isinstance(entry, Mapping)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("rank"), int)
            and entry["rank"] >= 1
        )
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
            adapters=adapters,
            credentials_secret=_credentials_secret(obj.get("spec")),
            index_shards=_index_shards(status.get("index")),
        )


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
