"""The AdapterCatalog spec as the operator reads it agrees with the CRD users apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.model.adaptercatalog import (
    AdapterCatalog,
    StorageLocation,
    parse_duration,
    parse_quantity,
)
from lorafleet_testbed.toolchain import REPO_ROOT

CRD = REPO_ROOT / "crds" / "lorafleet.dev_adaptercatalogs.yaml"
EXAMPLE = REPO_ROOT / "examples" / "adapter-catalog.yaml"


def _spec_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_defaults_in_the_crd_are_the_model_defaults() -> None:
    schema = _spec_schema()
    spec = AdapterCatalog.from_object(
        {"metadata": {"name": "c"}, "spec": {"source": {"uri": "s3://bucket/p"}}}
    ).spec
    assert schema["syncInterval"]["default"] == spec.sync_interval == "5m"
    assert schema["maxAdapterSize"]["default"] == spec.max_adapter_size == "4Gi"
    assert spec.sync_interval_seconds == 300
    assert spec.max_adapter_bytes == 4 * 1024**3


def test_the_example_catalogs_parse() -> None:
    for doc in yaml.safe_load_all(EXAMPLE.read_text()):
        if doc and doc.get("kind") == "AdapterCatalog":
            AdapterCatalog.from_object(doc)


@pytest.mark.parametrize(
    ("uri", "scheme", "bucket", "prefix", "canonical"),
    [
        ("s3://adapters/loras/qwen", "s3", "adapters", "loras/qwen/", "s3://adapters/loras/qwen/"),
        ("s3://adapters", "s3", "adapters", "", "s3://adapters/"),
        ("gs://my-bucket/x/", "gs", "my-bucket", "x/", "gs://my-bucket/x/"),
        ("file:///mnt/adapters", "file", "", "/mnt/adapters/", "file:///mnt/adapters/"),
    ],
)
def test_uris_parse_to_bucket_and_prefix(
    uri: str, scheme: str, bucket: str, prefix: str, canonical: str
) -> None:
    location = StorageLocation.parse(uri)
    assert (location.scheme, location.bucket, location.prefix) == (scheme, bucket, prefix)
    assert location.uri == canonical


@pytest.mark.parametrize("uri", ["http://x/y", "s3://", "file://relative/path", "abfss://c/p"])
def test_unsupported_uris_are_invalid_specs(uri: str) -> None:
    with pytest.raises(InvalidSpecError):
        StorageLocation.parse(uri)


def test_durations_and_sizes() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45s") == 45
    assert parse_quantity("2Gi") == 2 * 1024**3
    assert parse_quantity("500M") == 500_000_000
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_an_unknown_field_is_an_invalid_spec_naming_it() -> None:
    with pytest.raises(InvalidSpecError, match="sourc"):
        AdapterCatalog.from_object({"metadata": {"name": "c"}, "spec": {"sourc": {}}})


def test_crd_printer_columns_are_the_promised_ones() -> None:
    crd = yaml.safe_load(Path(CRD).read_text())
    (version,) = crd["spec"]["versions"]
    names = [column["name"] for column in version["additionalPrinterColumns"]]
    assert names == ["Ready", "Adapters", "Valid", "Invalid", "Last sync", "Age"]
    assert version["subresources"] == {"status": {}}
