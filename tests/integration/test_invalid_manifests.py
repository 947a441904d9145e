"""Manifests a user could plausibly get wrong are refused by the real API server (the CRDs'
schema and CEL rules) with a message that says what to change, and `lorafleet render` / the
operator's models refuse the same ones offline. What only the operator can check (the keys of
the free-form engine.extraArgs) becomes a Ready=False condition with reason InvalidSpec, and
the operator keeps running."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.model.adaptercatalog import AdapterCatalog
from lorafleet_operator.model.loramodel import LoRAModel
from lorafleet_testbed.controlplane import ControlPlane

from .conftest import OperatorProcess, condition, eventually, get_json

MODEL: dict[str, Any] = {
    "apiVersion": "lorafleet.dev/v1alpha1",
    "kind": "LoRAModel",
    "metadata": {"name": "m", "namespace": "default"},
    "spec": {"baseModel": {"source": "Qwen/Qwen2.5-0.5B-Instruct"}},
}
CATALOG: dict[str, Any] = {
    "apiVersion": "lorafleet.dev/v1alpha1",
    "kind": "AdapterCatalog",
    "metadata": {"name": "c", "namespace": "default"},
    "spec": {"source": {"uri": "s3://adapters/loras"}},
}

SYNC_RANGE = (
    "syncInterval must be between 5s and 168h (e.g. 30s, 5m, 1h); to sync at once, change the "
    "annotation lorafleet.dev/sync-requested"
)
SYNC_FORM = (
    "syncInterval must be a duration in whole hours, minutes and seconds, e.g. 30s, 5m or 1h30m"
)
SYSTEM_FOLDER = (
    "source.uri must not be a system folder (/, /bin, /boot, /dev, /etc, /lib*, /proc, /root, "
    "/run, /sbin, /sys, /usr, /var/run, /var/lib/kubelet) or the runtime's lorafleet-adapters "
    "cache: mount the adapters' volume at a path of its own, e.g. file:///mnt/adapters"
)
NOT_NORMALISED = (
    "source.uri file path must be normalised: no '//', '.' or '..' segments "
    "(e.g. file:///mnt/adapters)"
)
GLOB = "include and exclude patterns must close every '[' with a ']'"
IMAGE = (
    "image must be a container image reference like "
    "registry.example.com/team/lorafleet-runtime:1.2.3: no spaces or scheme, a lower-case "
    "repository path, then an optional non-empty ':tag' and/or '@sha256:<digest>'"
)


@dataclass(frozen=True)
class Case:
    """One bad manifest: the valid base of its kind with ``spec`` merged in (one level deep
    for ``source``), what the API server says, and what the offline model says."""

    id: str
    kind: str
    spec: dict[str, Any]
    message: str
    offline: str = ""

    def manifest(self) -> dict[str, Any]:
        obj = copy.deepcopy(MODEL if self.kind == "LoRAModel" else CATALOG)
        for key, value in self.spec.items():
            if key == "source":
                obj["spec"]["source"].update(value)
            else:
                obj["spec"][key] = value
        return obj


def _catalog(id_: str, message: str, offline: str = "", **spec: Any) -> Case:
    return Case(id_, "AdapterCatalog", spec, message, offline or message)


def _uri(id_: str, uri: str, message: str = SYSTEM_FOLDER) -> Case:
    # The API server quotes the value; the model's message is the rule's text alone.
    return _catalog(
        id_, f'spec.source.uri: Invalid value: "{uri}": {message}', message, source={"uri": uri}
    )


def _sync(id_: str, value: str) -> Case:
    return _catalog(
        id_,
        f"spec.syncInterval: Invalid value: {json.dumps(value)}: {SYNC_RANGE}",
        SYNC_RANGE,
        syncInterval=value,
    )


def _model(id_: str, message: str, offline: str, **spec: Any) -> Case:
    return Case(id_, "LoRAModel", spec, message, offline)


def _image(id_: str, image: str) -> Case:
    return _model(
        id_, f"spec.image: Invalid value: {json.dumps(image)}: {IMAGE}", IMAGE, image=image
    )


def _bound(id_: str, section: str, field: str, value: int, relation: str, limit: int) -> Case:
    words = {"le": "less than or equal to", "ge": "greater than or equal to"}[relation]
    return _model(
        id_,
        f"spec.{section}.{field} in body should be {words} {limit}",
        f"spec.{section}.{field}: Input should be {words} {limit}",
        **{section: {field: value}},
    )


CASES: list[Case] = [
    # --- AdapterCatalog.syncInterval: 0 would list without pause, 1s hammers the storage.
    _sync("sync interval zero", "0s"),
    _sync("sync interval zero in every unit", "0h0m0s"),
    _sync("sync interval of one second", "1s"),
    _sync("sync interval above a week", "169h"),
    _catalog(
        "negative sync interval",
        f'spec.syncInterval: Invalid value: "-5m": {SYNC_FORM}',
        SYNC_FORM,
        syncInterval="-5m",
    ),
    _catalog(
        "sync interval in milliseconds",
        f'spec.syncInterval: Invalid value: "500ms": {SYNC_FORM}',
        SYNC_FORM,
        syncInterval="500ms",
    ),
    _catalog(
        "sync interval in words",
        f'Invalid value: "5 minutes": {SYNC_FORM}',
        SYNC_FORM,
        syncInterval="5 minutes",
    ),
    # --- file:// catalogs on the system's own folders (the operator would list and read them).
    _uri("file root", "file:///"),
    _uri("file etc", "file:///etc"),
    _uri("file etc with a trailing slash", "file:///etc/"),
    _uri("file proc", "file:///proc/self"),
    _uri("file sys", "file:///sys"),
    _uri("file dev", "file:///dev/"),
    _uri("file service account secrets", "file:///var/run/secrets/kubernetes.io/serviceaccount"),
    _uri("file run", "file:///run/secrets"),
    _uri("file usr", "file:///usr/lib/python3/dist-packages"),
    _uri("file bin", "file:///bin"),
    _uri("file root home", "file:///root/.cache"),
    _uri("file kubelet", "file:///var/lib/kubelet/pods"),
    _uri("file runtime adapter cache", "file:///tmp/lorafleet-adapters/replica-7"),
    _uri("file dot dot back into etc", "file:///etc/../etc", NOT_NORMALISED),
    _uri("file dot dot out of a volume", "file:///mnt/adapters/../../etc", NOT_NORMALISED),
    _uri("file four slashes", "file:////etc", NOT_NORMALISED),
    _uri("file dot segment", "file:///mnt/./adapters", NOT_NORMALISED),
    _uri("file double slash inside", "file:///mnt//adapters", NOT_NORMALISED),
    # --- options that only mean something for object storage.
    _catalog(
        "credentials on a file catalog",
        "source.credentialsSecretRef is for s3:// and gs:// sources only",
        source={"uri": "file:///mnt/adapters", "credentialsSecretRef": {"name": "s3-creds"}},
    ),
    _catalog(
        "endpoint on a file catalog",
        "source.endpoint is for s3:// and gs:// sources only",
        source={"uri": "file:///mnt/adapters", "endpoint": "http://minio:9000"},
    ),
    # --- globs: fnmatch reads an unclosed '[' literally, so the pattern silently matches nothing.
    _catalog(
        "include unclosed bracket",
        f'spec.include[0]: Invalid value: "[": {GLOB}',
        GLOB,
        include=["["],
    ),
    _catalog(
        "exclude stars then bracket",
        f'spec.exclude[1]: Invalid value: "**[": {GLOB}',
        GLOB,
        exclude=["tmp-*", "**["],
    ),
    _catalog(
        "include empty class", f'spec.include[0]: Invalid value: "[]": {GLOB}', GLOB, include=["[]"]
    ),
    _catalog(
        "include negated empty class",
        f'spec.include[0]: Invalid value: "[!]": {GLOB}',
        GLOB,
        include=["[!]"],
    ),
    _catalog(
        "include bracket after a prefix",
        f'spec.include[0]: Invalid value: "sql-[a-z": {GLOB}',
        GLOB,
        include=["sql-[a-z"],
    ),
    # --- LoRAModel.image: references no registry can serve.
    _image("image with a space", "my registry/lorafleet-runtime:1.0"),
    _image("image with an upper-case repository", "Lorafleet/Runtime:1.0"),
    _image("image with an upper-case path under a registry", "ghcr.io/Acme/runtime:1.0"),
    _image("image with a double colon", "lorafleet/runtime::1.0"),
    _image("image with an empty tag", "lorafleet/runtime:"),
    _image("image with a URL scheme", "https://ghcr.io/acme/runtime:1.0"),
    _image("image with a short digest", "lorafleet/runtime@sha256:abc"),
    # --- absurd counts.
    _bound("negative maxLoras", "engine", "maxLoras", -1, "ge", 1),
    _bound("maxLoras of 100000", "engine", "maxLoras", 100_000, "le", 256),
    _bound("maxCpuLoras of a million", "engine", "maxCpuLoras", 1_000_000, "le", 4096),
    _bound("maxModelLen of zero", "engine", "maxModelLen", 0, "ge", 16),
    _bound("maxModelLen of two billion", "engine", "maxModelLen", 2_000_000_000, "le", 16777216),
    _bound("tensor parallelism of 1000", "engine", "tensorParallelSize", 1000, "le", 64),
    _bound("replicas max of 100000", "replicas", "max", 100_000, "le", 1024),
    _bound("replicas min of 5000", "replicas", "min", 5000, "le", 1024),
    _model(
        "maxLoraRank of zero",
        'spec.engine.maxLoraRank: Unsupported value: 0: supported values: "1", "8", "16"',
        "spec.engine.maxLoraRank: Input should be 1, 8, 16",
        engine={"maxLoraRank": 0},
    ),
    _model(
        "maxLoraRank of 4096",
        'spec.engine.maxLoraRank: Unsupported value: 4096: supported values: "1", "8", "16"',
        "spec.engine.maxLoraRank: Input should be 1, 8, 16",
        engine={"maxLoraRank": 4096},
    ),
    _model(
        "gpuMemoryUtilization above one",
        "spec.engine.gpuMemoryUtilization in body should be less than or equal to 1",
        "spec.engine.gpuMemoryUtilization: Input should be less than or equal to 1",
        engine={"gpuMemoryUtilization": 1.5},
    ),
]


def _create(plane: ControlPlane, obj: dict[str, Any]) -> tuple[int, str]:
    result = plane.kubectl(
        "create", "--dry-run=server", "-f", "-", input_text=json.dumps(obj), check=False
    )
    return result.returncode, result.stderr


def _offline_error(obj: dict[str, Any]) -> str:
    """What `lorafleet render` (LoRAModel) and `catalog scan` / the operator (AdapterCatalog)
    say about the same manifest without a cluster; empty when they accept it."""
    parse: Callable[[dict[str, Any]], Any] = (
        LoRAModel.from_object if obj["kind"] == "LoRAModel" else AdapterCatalog.from_object
    )
    try:
        parse(obj)
    except InvalidSpecError as err:
        return err.message
    return ""


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_the_api_server_and_the_offline_models_refuse_it_saying_what_to_change(
    control_plane: ControlPlane, case: Case
) -> None:
    obj = case.manifest()
    code, stderr = _create(control_plane, obj)
    assert code != 0
    assert case.message in stderr
    assert case.offline in _offline_error(obj)


ACCEPTED: list[tuple[str, str, dict[str, Any]]] = [
    # The limits themselves, and look-alikes of refused values.
    ("sync interval 5s", "AdapterCatalog", {"syncInterval": "5s"}),
    ("sync interval 168h", "AdapterCatalog", {"syncInterval": "168h"}),
    ("sync interval 1h30m", "AdapterCatalog", {"syncInterval": "1h30m"}),
    ("file volume with a trailing slash", "AdapterCatalog", {"source": {"uri": "file:///mnt/a/"}}),
    ("file folder named like etc", "AdapterCatalog", {"source": {"uri": "file:///etcetera/a"}}),
    ("file under srv", "AdapterCatalog", {"source": {"uri": "file:///srv/adapters"}}),
    ("file under tmp", "AdapterCatalog", {"source": {"uri": "file:///tmp/adapters"}}),
    ("file named dots", "AdapterCatalog", {"source": {"uri": "file:///mnt/..hidden/x.y"}}),
    (
        "closed globs",
        "AdapterCatalog",
        {"include": ["sql-[a-z]*", "[[]x", "[!]]y", "[]]z", "*"], "exclude": ["]", "tmp-?"]},
    ),
    (
        "image with registry port and digest",
        "LoRAModel",
        {
            "image": "localhost:5000/team/runtime:1.0@sha256:" + "0" * 64,
        },
    ),
    ("image on docker hub", "LoRAModel", {"image": "rayproject/ray:2.60.0"}),
    (
        "image with dashes and dots",
        "LoRAModel",
        {
            "image": "registry.internal/lorafleet/runtime:0.1.0-cu128",
        },
    ),
    (
        "largest counts",
        "LoRAModel",
        {
            "engine": {
                "maxLoras": 256,
                "maxCpuLoras": 4096,
                "maxModelLen": 16777216,
                "tensorParallelSize": 64,
            },
            "replicas": {"min": 1024, "max": 1024},
        },
    ),
    ("smallest context", "LoRAModel", {"engine": {"maxModelLen": 16}}),
]


@pytest.mark.parametrize(
    ("kind", "spec"), [(k, s) for _, k, s in ACCEPTED], ids=[i for i, _, _ in ACCEPTED]
)
def test_values_next_to_the_refused_ones_are_accepted(
    control_plane: ControlPlane, kind: str, spec: dict[str, Any]
) -> None:
    obj = Case("", kind, spec, "").manifest()
    assert _create(control_plane, obj) == (0, "")
    assert _offline_error(obj) == ""


# engine.extraArgs is free-form (x-kubernetes-preserve-unknown-fields): CEL cannot see its
# keys, so only the operator refuses them. Each spelling of a managed argument, and CLI flags.
EXTRA_ARGS: list[tuple[str, dict[str, Any], str]] = [
    (
        "dashes",
        {"--max-loras": 8},
        "may not set --max-loras: lorafleet sets max_loras from engine.maxLoras; remove it from "
        "engine.extraArgs",
    ),
    (
        "dashes and underscores",
        {"--max_loras": 8},
        "may not set --max_loras: lorafleet sets max_loras",
    ),
    ("kebab case", {"max-loras": 8}, "may not set max-loras: lorafleet sets max_loras"),
    ("snake case", {"max_loras": 8}, "may not set max_loras: lorafleet sets max_loras"),
    (
        "with its value",
        {"--max-loras=4": True},
        "may not set --max-loras=4: lorafleet sets max_loras",
    ),
    ("upper case", {"--MAX-LORAS": 8}, "may not set --MAX-LORAS: lorafleet sets max_loras"),
    (
        "enable lora",
        {"--enable-lora": True},
        "may not set --enable-lora: lorafleet sets enable_lora itself",
    ),
    (
        "model",
        {"--model": "other/model"},
        "may not set --model: lorafleet sets model from baseModel.source",
    ),
    ("port", {"--port": 9000}, "may not set --port: lorafleet sets port from Ray Serve"),
    (
        "static lora modules",
        {"lora_modules": ["a=/x"]},
        "may not set lora_modules: lorafleet sets lora_modules from spec.catalogs",
    ),
    (
        "max model len",
        {"max_model_len": 4096},
        "lorafleet sets max_model_len from engine.maxModelLen",
    ),
    (
        "a CLI flag",
        {"--enforce-eager": True},
        "engine.extraArgs keys must be vLLM engine argument names in snake_case, not "
        "command-line flags: write '--enforce-eager' as 'enforce_eager'",
    ),
]


def test_the_operator_refuses_managed_or_misspelled_extra_args_and_keeps_running(
    control_plane: ControlPlane, lorafleet_operator: OperatorProcess
) -> None:
    namespace = "invalid-extra-args"
    control_plane.kubectl("create", "namespace", namespace)
    names = {}
    for index, (label, extra, _) in enumerate(EXTRA_ARGS):
        obj = copy.deepcopy(MODEL)
        obj["metadata"] = {"name": f"extra-{index}", "namespace": namespace}
        obj["spec"]["engine"] = {"extraArgs": extra}
        # The API server cannot check these: they are admitted as they are.
        control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(obj))
        names[label] = obj["metadata"]["name"]

    def ready(name: str) -> dict[str, Any]:
        model = get_json(control_plane, "loramodel", name, "-n", namespace)
        return condition(model, "Ready") if model else {}

    def refused(name: str) -> dict[str, Any]:
        found = ready(name)
        return found if found.get("reason") == "InvalidSpec" else {}

    for label, _, message in EXTRA_ARGS:
        name = names[label]
        found = eventually(
            functools.partial(refused, name), what=f"Ready=False InvalidSpec on {name} ({label})"
        )
        assert found["status"] == "False"
        assert message in found["message"], (label, found["message"])
    rayservices = get_json(control_plane, "rayservices", "-n", namespace)
    assert rayservices.get("items") == []
    # No crash loop: the same process is alive and never logged a traceback.
    assert lorafleet_operator.proc is not None
    assert lorafleet_operator.proc.popen.poll() is None
    log = lorafleet_operator.log_text()
    assert "Traceback" not in log
    for _, _, message in EXTRA_ARGS:  # the operator's log says what is wrong, too
        assert message in log
