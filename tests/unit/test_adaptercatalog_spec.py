"""The AdapterCatalog spec as the operator reads it agrees with the CRD users apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.model import adaptercatalog as model
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
    catalogs = {
        catalog.name: catalog
        for catalog in (
            AdapterCatalog.from_object(doc)
            for doc in yaml.safe_load_all(EXAMPLE.read_text())
            if doc and doc.get("kind") == "AdapterCatalog"
        )
    }
    assert sorted(catalogs) == ["minio-adapters", "pvc-adapters", "support-adapters"]
    support = catalogs["support-adapters"].spec
    assert support.source.location.uri == "s3://my-adapters/loras/qwen2.5-0.5b/"
    assert support.source.credentials_secret_ref is not None
    assert support.source.credentials_secret_ref.name == "adapter-bucket-credentials"
    assert support.sync_interval_seconds == 300
    assert support.exclude
    assert catalogs["minio-adapters"].spec.sync_interval_seconds == 60
    assert catalogs["pvc-adapters"].spec.source.location.prefix == "/mnt/adapters/"


def _rules(node: dict[str, Any]) -> dict[str, str]:
    return {rule["message"]: rule["rule"] for rule in node.get("x-kubernetes-validations", [])}


def test_the_crds_new_rules_are_the_models_rules_word_for_word() -> None:
    """`lorafleet catalog scan` and the operator (pydantic) refuse what the API server (CEL)
    refuses, with the same message: same regular expressions, same text."""
    schema = _spec_schema()
    sync = _rules(schema["syncInterval"])
    assert sync.keys() == {model.SYNC_INTERVAL_FORM_MESSAGE, model.SYNC_INTERVAL_RANGE_MESSAGE}
    assert model.SYNC_INTERVAL_FORM.pattern in sync[model.SYNC_INTERVAL_FORM_MESSAGE]
    assert "duration('5s')" in sync[model.SYNC_INTERVAL_RANGE_MESSAGE]
    assert model.MIN_SYNC_INTERVAL_SECONDS == 5
    assert "duration('168h')" in sync[model.SYNC_INTERVAL_RANGE_MESSAGE]
    assert model.MAX_SYNC_INTERVAL_SECONDS == 168 * 3600
    uri = _rules(schema["source"]["properties"]["uri"])
    assert model._UNNORMALISED_PATH.pattern in uri[model.FILE_PATH_FORM_MESSAGE]
    assert model._SYSTEM_FOLDER.pattern in uri[model.SYSTEM_FOLDER_MESSAGE]
    for field in ("include", "exclude"):
        globs = _rules(schema[field]["items"])
        assert model.GLOB.pattern in globs[model.GLOB_MESSAGE]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"syncInterval": "0s"}, "syncInterval must be between 5s and 168h"),
        ({"syncInterval": "1s"}, "syncInterval must be between 5s and 168h"),
        ({"syncInterval": "-5m"}, "syncInterval must be a duration in whole hours"),
        ({"source": {"uri": "file:///etc"}}, "source.uri must not be a system folder"),
        ({"source": {"uri": "file:///etc/../etc"}}, "source.uri file path must be normalised"),
        ({"source": {"uri": "file:////etc"}}, "source.uri file path must be normalised"),
        ({"include": ["["]}, "include and exclude patterns must close every '['"),
        (
            {"source": {"uri": "file:///mnt/a", "credentialsSecretRef": {"name": "s"}}},
            "source.credentialsSecretRef is for s3:// and gs:// sources only",
        ),
    ],
)
def test_the_model_refuses_what_the_crd_refuses(spec: dict[str, Any], message: str) -> None:
    obj = {"metadata": {"name": "c"}, "spec": {"source": {"uri": "s3://bucket/p"}, **spec}}
    with pytest.raises(InvalidSpecError) as refused:
        AdapterCatalog.from_object(obj)
    assert message in refused.value.message


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


@pytest.mark.parametrize(
    ("interval", "seconds"), [("0s", 5), ("1s", 5), ("30s", 30), ("999h", 168 * 3600)]
)
def test_a_stored_catalog_from_before_the_bounds_never_syncs_without_pause(
    interval: str, seconds: float
) -> None:
    # The API server refuses these now; objects it stored earlier still reach the operator,
    # whose retry after InvalidSpec (and next sync) waits the clamped interval.
    from lorafleet_operator.reconcile.controllers import _sync_interval

    assert _sync_interval({"spec": {"syncInterval": interval}}) == seconds
