"""The adapter index of one AdapterCatalog, as the operator writes it into ConfigMaps and the
runtime reads it back. Pure (no Kubernetes client, no storage SDK): both sides import it.

Layout, stable across releases of format version 1 (catalog ``C`` in namespace ``N``):

- Manifest ConfigMap ``lorafleet-catalog.C``, key ``manifest.json``: an :class:`IndexManifest`
  (format version, catalog, source URI, counts, the shard names with a digest and an adapter
  count each, and the digest of the whole index).
- Shard ConfigMaps ``lorafleet-catalog.C.0`` … ``lorafleet-catalog.C.<n-1>``, key
  ``adapters.jsonl``: one :class:`AdapterRecord` per line (JSON, sorted by name). An adapter
  lives in shard ``crc32(name) % n``, so adding one adapter rewrites one shard, not all.
- Every one of them is labelled ``<API group>/catalog=C`` and
  ``<API group>/catalog-index=manifest|shard`` (``names.LABEL_CATALOG``,
  ``names.LABEL_CATALOG_INDEX_PART``), and owned by the AdapterCatalog (deleting
  the catalog garbage-collects its index).

Writers update shards first and the manifest last; a reader takes the manifest, then the shards
it names, and checks each shard's digest: a digest mismatch means a sync is in flight, so read
again. Catalog names are DNS-1123 labels (no dots, enforced by the CRD), so the names above
never collide between catalogs.

Invalid adapters are in the index too (``valid: false`` with a one-word ``reason``), so the
runtime can answer "known but invalid" with the reason instead of "not found". ``valid`` means
"some engine could serve it"; which engine can is decided from what the record says the adapter
is (``lorafleet_api.adapter_support``), not written into it:

- ``modulesToSave``: the modules the adapter replaces whole (PEFT's ``modules_to_save``),
  sorted; left out when none.
- ``variant``: ``"dora"`` for DoRA (``use_dora``); left out for plain LoRA.
- ``rankPattern``: ``true`` when ``rank_pattern`` or ``alpha_pattern`` gives some layers their
  own rank or alpha; left out when false.

These fields came after the first records of format version 1: they are optional, and a record
without them is a plain LoRA adapter, as every valid record written before them was.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION: Final = 1

PART_MANIFEST: Final = "manifest"
PART_SHARD: Final = "shard"

MANIFEST_KEY: Final = "manifest.json"
SHARD_KEY: Final = "adapters.jsonl"

NAME_PREFIX: Final = "lorafleet-catalog"

# A ConfigMap holds at most 1 MiB. Shards aim for half of it so that a skewed hash or a burst
# of long names stays far from the limit; a shard above MAX_SHARD_BYTES doubles the count.
TARGET_SHARD_BYTES: Final = 512 * 1024
MAX_SHARD_BYTES: Final = 900 * 1024
MAX_SHARDS: Final = 1024


def manifest_name(catalog: str) -> str:
    """The manifest ConfigMap of ``catalog``."""
    return f"{NAME_PREFIX}.{catalog}"


def shard_name(catalog: str, shard: int) -> str:
    """The ConfigMap holding shard number ``shard`` of ``catalog``."""
    return f"{NAME_PREFIX}.{catalog}.{shard}"


def shard_of(adapter: str, shards: int) -> int:
    """Which shard holds ``adapter`` when there are ``shards`` shards (stable across runs)."""
    return zlib.crc32(adapter.encode()) % shards


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class AdapterFile(_Frozen):
    """One file at the top of an adapter folder."""

    name: str
    size: int = Field(ge=0)


class AdapterRecord(_Frozen):
    """One adapter folder as the last sync saw it.

    ``revision`` changes whenever any file of the folder changes (ETag, generation or mtime),
    so a re-upload under the same name is a new revision. ``uri`` is the folder, ending in
    ``/``; ``files`` are the files at its top with their sizes (what a download must yield).
    """

    name: str
    uri: str
    revision: str
    valid: bool
    reason: str | None = None
    message: str | None = None
    rank: int | None = None
    alpha: float | None = None
    peft_type: str | None = Field(default=None, alias="peftType")
    base_model: str | None = Field(default=None, alias="baseModel")
    target_modules: tuple[str, ...] = Field(default=(), alias="targetModules")
    modules_to_save: tuple[str, ...] = Field(default=(), alias="modulesToSave")
    variant: str | None = None
    rank_pattern: bool = Field(default=False, alias="rankPattern")
    files: tuple[AdapterFile, ...] = ()
    size_bytes: int = Field(default=0, ge=0, alias="sizeBytes")

    def to_json(self) -> str:
        """One line of a shard: compact, keys sorted, empty fields left out."""
        data = self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=False)
        for empty_when_absent in ("targetModules", "modulesToSave", "rankPattern"):
            if not data.get(empty_when_absent):
                data.pop(empty_when_absent, None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


class ShardRef(_Frozen):
    name: str
    digest: str
    adapters: int = Field(ge=0)


class IndexManifest(_Frozen):
    format_version: int = Field(alias="formatVersion")
    catalog: str
    namespace: str
    uri: str
    adapters: int = Field(ge=0)
    valid: int = Field(ge=0)
    invalid: int = Field(ge=0)
    digest: str
    shards: tuple[ShardRef, ...]

    def to_json(self) -> str:
        return json.dumps(
            self.model_dump(by_alias=True), sort_keys=True, separators=(",", ":"), indent=None
        )


class IndexFormatError(ValueError):
    """The ConfigMaps do not form a complete index of a known format version (yet)."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def encode_shard(records: Iterable[AdapterRecord]) -> str:
    return "".join(record.to_json() + "\n" for record in sorted(records, key=lambda r: r.name))


def build_index(
    catalog: str, namespace: str, uri: str, records: Sequence[AdapterRecord]
) -> tuple[IndexManifest, dict[str, str]]:
    """The manifest and ``{shard ConfigMap name: adapters.jsonl text}`` for ``records``.

    Deterministic: the same records give the same texts and digests, so a writer can skip
    ConfigMaps whose digest did not change."""
    lines = {record.name: record.to_json() + "\n" for record in records}
    total = sum(len(line.encode()) for line in lines.values())
    shards = 1
    while shards < MAX_SHARDS and total / shards > TARGET_SHARD_BYTES:
        shards *= 2
    while True:
        buckets: list[list[str]] = [[] for _ in range(shards)]
        for name in sorted(lines):
            buckets[shard_of(name, shards)].append(lines[name])
        texts = ["".join(bucket) for bucket in buckets]
        if shards >= MAX_SHARDS or max(len(t.encode()) for t in texts) <= MAX_SHARD_BYTES:
            break
        shards *= 2
    refs = tuple(
        ShardRef(name=shard_name(catalog, i), digest=_digest(text), adapters=len(buckets[i]))
        for i, text in enumerate(texts)
    )
    valid = sum(1 for record in records if record.valid)
    manifest = IndexManifest.model_validate(
        {
            "formatVersion": FORMAT_VERSION,
            "catalog": catalog,
            "namespace": namespace,
            "uri": uri,
            "adapters": len(records),
            "valid": valid,
            "invalid": len(records) - valid,
            "digest": _digest("".join(ref.digest for ref in refs)),
            "shards": refs,
        }
    )
    return manifest, {ref.name: text for ref, text in zip(refs, texts, strict=True)}


def parse_manifest(text: str) -> IndexManifest:
    try:
        manifest = IndexManifest.model_validate_json(text)
    except ValueError as err:
        raise IndexFormatError(f"not an index manifest: {err}") from err
    if manifest.format_version != FORMAT_VERSION:
        raise IndexFormatError(f"unknown index format version {manifest.format_version}")
    return manifest


def parse_shard(text: str) -> list[AdapterRecord]:
    try:
        return [AdapterRecord.model_validate_json(line) for line in text.splitlines() if line]
    except ValueError as err:
        raise IndexFormatError(f"not an index shard: {err}") from err


def read_index(manifest_text: str, shard_texts: Mapping[str, str]) -> list[AdapterRecord]:
    """Every record of a complete index, sorted by name.

    ``shard_texts`` maps shard ConfigMap names to their ``adapters.jsonl``. Raises IndexFormatError
    when a shard is missing or does not match the manifest's digest (a sync in flight)."""
    manifest = parse_manifest(manifest_text)
    records: list[AdapterRecord] = []
    for ref in manifest.shards:
        text = shard_texts.get(ref.name)
        if text is None:
            raise IndexFormatError(f"shard {ref.name} is missing")
        if _digest(text) != ref.digest:
            raise IndexFormatError(f"shard {ref.name} does not match the manifest")
        records.extend(parse_shard(text))
    return sorted(records, key=lambda record: record.name)
