"""The AdapterCatalog spec as the operator reads it (the CRD in crds/ is the truth for users).

Mirrors the CRD's defaults and rules, so a catalog read from a file (``lorafleet catalog scan``
or ``render``) behaves as one admitted by the API server."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lorafleet_operator.errors import InvalidSpecError

Scheme = Literal["s3", "gs", "file"]

DEFAULT_SYNC_INTERVAL: Final = "5m"
DEFAULT_MAX_ADAPTER_SIZE: Final = "4Gi"

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_QUANTITY_FACTORS: Final = {
    None: 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_BUCKET = re.compile(r"^[a-z0-9][-a-z0-9._]{1,220}[a-z0-9]$")

# The CRD's rules, word for word (a catalog read from a file gets the same answers).
SYNC_INTERVAL_FORM: Final = re.compile(r"^([0-9]{1,3}h)?([0-9]{1,5}m)?([0-9]{1,6}s)?$")
SYNC_INTERVAL_FORM_MESSAGE: Final = (
    "syncInterval must be a duration in whole hours, minutes and seconds, e.g. 30s, 5m or "
    "1h30m (no signs, fractions or other units)"
)
MIN_SYNC_INTERVAL_SECONDS: Final = 5
MAX_SYNC_INTERVAL_SECONDS: Final = 168 * 3600
SYNC_INTERVAL_RANGE_MESSAGE: Final = (
    "syncInterval must be between 5s and 168h (e.g. 30s, 5m, 1h); to sync at once, change the "
    "annotation lorafleet.dev/sync-requested"
)
# A file path with '//', '.' or '..' segments (it must be written normalised).
_UNNORMALISED_PATH: Final = re.compile(r"//|/[.][.]?(/|$)")
FILE_PATH_FORM_MESSAGE: Final = (
    "source.uri file path must be normalised: no '//', '.' or '..' segments "
    "(e.g. file:///mnt/adapters)"
)
# Folders a catalog may not be: the image's system folders, the kernel's, runtime state with
# mounted Secrets, the kubelet's, and the runtime's adapter cache (see the CRD).
_SYSTEM_FOLDER: Final = re.compile(
    r"^/((bin|boot|dev|etc|lib|lib32|lib64|libx32|proc|root|run|sbin|sys|usr|var/run"
    r"|var/lib/kubelet)(/|$)|$)|(^|/)lorafleet-adapters(/|$)"
)
SYSTEM_FOLDER_MESSAGE: Final = (
    "source.uri must not be a system folder (/, /bin, /boot, /dev, /etc, /lib*, /proc, /root, "
    "/run, /sbin, /sys, /usr, /var/run, /var/lib/kubelet) or the runtime's lorafleet-adapters "
    "cache: mount the adapters' volume at a path of its own, e.g. file:///mnt/adapters"
)
# An fnmatch glob whose every '[' opens a closed character class.
GLOB: Final = re.compile(r"^([^\[]|\[(!?\][^\]]*|![^\]]+|[^!\]][^\]]*)\])*$")
GLOB_MESSAGE: Final = (
    "include and exclude patterns must close every '[' with a ']' (fnmatch globs: *, ?, "
    "[abc], [!abc]; write [[] for a literal '[')"
)


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration made of hours, minutes and seconds (``1h30m``, ``45s``)."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"not a duration like 30s, 5m or 1h: {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def parse_quantity(value: int | str) -> int:
    """Bytes in a Kubernetes quantity without fractions (``2Gi``, ``500M``, ``1024``)."""
    if isinstance(value, int):
        return value
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a size like 2Gi or 500M: {value!r}")
    return int(match.group(1)) * _QUANTITY_FACTORS[match.group(2)]


class StorageLocation(BaseModel):
    """A parsed source URI: scheme, bucket (empty for ``file``) and the folder inside it.

    ``prefix`` ends in ``/`` unless empty (the bucket root); for ``file`` it is an absolute
    path ending in ``/``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: Scheme
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> StorageLocation:
        parts = urlsplit(uri)
        scheme = parts.scheme
        if scheme == "file":
            if parts.netloc or not parts.path.startswith("/"):
                raise InvalidSpecError(f"file URIs need an absolute path (file:///mnt/x): {uri}")
            if _UNNORMALISED_PATH.search(uri.removeprefix("file://")):
                raise InvalidSpecError(FILE_PATH_FORM_MESSAGE)
            if _SYSTEM_FOLDER.search(uri.removeprefix("file://")):
                raise InvalidSpecError(SYSTEM_FOLDER_MESSAGE)
            path = parts.path.rstrip("/") + "/"
            return cls(scheme="file", bucket="", prefix=path)
        if scheme not in ("s3", "gs"):
            raise InvalidSpecError(f"source.uri must start with s3://, gs:// or file:///: {uri}")
        if not _BUCKET.fullmatch(parts.netloc):
            raise InvalidSpecError(f"source.uri must name a bucket ({scheme}://bucket/prefix)")
        prefix = parts.path.strip("/")
        return cls(
            scheme="s3" if scheme == "s3" else "gs",
            bucket=parts.netloc,
            prefix=prefix + "/" if prefix else "",
        )

    @property
    def uri(self) -> str:
        """The canonical URI of the folder, ending in ``/``."""
        if self.scheme == "file":
            return f"file://{self.prefix}"
        return f"{self.scheme}://{self.bucket}/{self.prefix}"

    def folder_uri(self, adapter: str) -> str:
        return f"{self.uri}{adapter}/"


class SecretRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)


class CatalogSource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    uri: str
    endpoint: str | None = None
    region: str | None = None
    credentials_secret_ref: SecretRef | None = Field(default=None, alias="credentialsSecretRef")

    @model_validator(mode="after")
    def _check_file_options(self) -> CatalogSource:
        if self.uri.startswith("file://"):
            if self.credentials_secret_ref is not None:
                raise ValueError("source.credentialsSecretRef is for s3:// and gs:// sources only")
            if self.endpoint is not None:
                raise ValueError("source.endpoint is for s3:// and gs:// sources only")
        return self

    @property
    def location(self) -> StorageLocation:
        return StorageLocation.parse(self.uri)


class AdapterCatalogSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    source: CatalogSource
    base_model: str | None = Field(default=None, alias="baseModel")
    sync_interval: str = Field(default=DEFAULT_SYNC_INTERVAL, alias="syncInterval")
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_adapter_size: int | str = Field(default=DEFAULT_MAX_ADAPTER_SIZE, alias="maxAdapterSize")

    @field_validator("sync_interval")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not value or not SYNC_INTERVAL_FORM.fullmatch(value):
            raise ValueError(SYNC_INTERVAL_FORM_MESSAGE)
        if not MIN_SYNC_INTERVAL_SECONDS <= parse_duration(value) <= MAX_SYNC_INTERVAL_SECONDS:
            raise ValueError(SYNC_INTERVAL_RANGE_MESSAGE)
        return value

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        if any(not GLOB.fullmatch(pattern) for pattern in patterns):
            raise ValueError(GLOB_MESSAGE)
        return patterns

    @field_validator("max_adapter_size")
    @classmethod
    def _quantity(cls, value: int | str) -> int | str:
        parse_quantity(value)
        return value

    @property
    def sync_interval_seconds(self) -> float:
        return parse_duration(self.sync_interval)

    @property
    def max_adapter_bytes(self) -> int:
        return parse_quantity(self.max_adapter_size)


class AdapterCatalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    namespace: str
    uid: str | None = None
    generation: int | None = None
    spec: AdapterCatalogSpec

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> AdapterCatalog:
        """Parse an AdapterCatalog object; InvalidSpecError says what is wrong, in words."""
        metadata = obj.get("metadata") or {}
        try:
            catalog = cls(
                name=str(metadata.get("name", "")),
                namespace=str(metadata.get("namespace") or "default"),
                uid=metadata.get("uid"),
                generation=metadata.get("generation"),
                spec=AdapterCatalogSpec.model_validate(obj.get("spec") or {}),
            )
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in err.errors()
            )
            raise InvalidSpecError(f"invalid AdapterCatalog spec: {problems}") from err
        catalog.spec.source.location  # noqa: B018  (raises InvalidSpecError for a bad URI)
        return catalog
