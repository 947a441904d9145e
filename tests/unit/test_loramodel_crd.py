"""The LoRAModel CRD: a structural schema the API server accepts, documented for
`kubectl explain`, and in step with the operator's own models."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, get_args

import pytest

from lorafleet_api import naming
from lorafleet_api.contract import (
    DEPRECATED_ROUTER_POLICIES,
    ROUTER_POLICIES,
    SUPPORTED_MAX_LORA_RANKS,
    Dtype,
)
from lorafleet_api.names import (
    API_GROUP,
    API_VERSION,
    LORAMODEL_KIND,
    LORAMODEL_PLURAL,
)
from lorafleet_operator.model import loramodel as model_module

# The one place free-form data is allowed: vLLM engine arguments passed through as written.
PRESERVE_UNKNOWN_ALLOWED = {"spec.engine.extraArgs"}


def schema_nodes(node: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node below ``node``, with a path like spec.env[].valueFrom."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from schema_nodes(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), Mapping):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")


def test_crd_names_the_resource_as_users_type_it(loramodel_crd: dict[str, Any]) -> None:
    spec = loramodel_crd["spec"]
    assert loramodel_crd["metadata"]["name"] == f"{LORAMODEL_PLURAL}.{API_GROUP}"
    assert spec["group"] == API_GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == LORAMODEL_KIND
    assert spec["names"]["plural"] == LORAMODEL_PLURAL
    assert spec["names"]["singular"] == "loramodel"
    assert spec["names"]["shortNames"] == ["lm"]
    assert spec["names"]["categories"] == ["lorafleet"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (API_VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_schema_is_structural(loramodel_schema: dict[str, Any]) -> None:
    problems = []
    for path, node in schema_nodes(loramodel_schema, ""):
        if node.get("x-kubernetes-preserve-unknown-fields"):
            if path not in PRESERVE_UNKNOWN_ALLOWED:
                problems.append(f"{path}: preserves unknown fields")
            continue
        if node.get("x-kubernetes-int-or-string"):
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
            continue
        if "type" not in node:
            problems.append(f"{path}: no type")
        if (
            node.get("type") == "object"
            and path != "metadata"
            and "properties" not in node
            and "additionalProperties" not in node
        ):
            problems.append(f"{path}: object without properties")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{path}: array without items")
    assert problems == []


def test_every_field_is_documented_for_kubectl_explain(loramodel_schema: dict[str, Any]) -> None:
    undocumented = [
        path
        for path, node in schema_nodes(loramodel_schema, "")
        if (path.startswith(("spec", "status")))
        and not path.endswith(("[]", "{}"))
        and not node.get("description")
    ]
    assert undocumented == []


def test_both_spec_and_status_are_spelled_out(loramodel_schema: dict[str, Any]) -> None:
    spec = loramodel_schema["properties"]["spec"]["properties"]
    status = loramodel_schema["properties"]["status"]["properties"]
    assert {
        "modelId",
        "baseModel",
        "catalogs",
        "engine",
        "replicas",
        "resources",
        "router",
        "image",
        "upgradeStrategy",
        "serviceAccountName",
        "env",
        "nodeSelector",
        "tolerations",
    } <= set(spec)
    assert {
        "observedGeneration",
        "conditions",
        "rayServiceName",
        "endpoint",
        "modelId",
        "maxLoraRank",
        "adapters",
        "warnings",
    } <= set(status)
    assert status["adapters"]["properties"]["incompatibleNames"]["maxItems"] == 20


def _resolve(schema: Mapping[str, Any], json_path: str) -> Mapping[str, Any] | None:
    node: Mapping[str, Any] | None = schema
    # Filters like [?(@.type=="Ready")] select list items; only the path shape matters here.
    for part in re.sub(r"\[[^\]]*\]", "[]", json_path).lstrip(".").split("."):
        name = part.removesuffix("[]")
        if node is None:
            return None
        if name == "metadata" and node is schema:
            return {"type": "object"}  # ObjectMeta: creationTimestamp and friends
        node = (node.get("properties") or {}).get(name)
        if node is not None and part.endswith("]"):
            node = node.get("items")
    return node


def test_printer_columns_show_existing_fields(
    loramodel_crd: dict[str, Any], loramodel_schema: dict[str, Any]
) -> None:
    (version,) = loramodel_crd["spec"]["versions"]
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert list(columns) == ["Ready", "Model ID", "Adapters", "Endpoint", "Age"]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    for column in columns.values():
        assert _resolve(loramodel_schema, column["jsonPath"]) is not None, column["jsonPath"]
    assert columns["Adapters"]["type"] == "integer"
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"


def test_map_list_keys_are_required(loramodel_schema: dict[str, Any]) -> None:
    for path, node in schema_nodes(loramodel_schema, ""):
        if node.get("x-kubernetes-list-type") == "map":
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in node["items"].get("required", []), path


def _spec_field(loramodel_schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    node: Mapping[str, Any] = loramodel_schema["properties"]["spec"]
    for name in path.split("."):
        node = node["properties"][name]
    return node


def test_rank_enum_is_exactly_what_vllm_supports(loramodel_schema: dict[str, Any]) -> None:
    rank = _spec_field(loramodel_schema, "engine.maxLoraRank")
    assert tuple(rank["enum"]) == SUPPORTED_MAX_LORA_RANKS
    assert "MaxLoRARanks" in rank["description"]


def test_enums_match_the_contract(loramodel_schema: dict[str, Any]) -> None:
    assert tuple(_spec_field(loramodel_schema, "engine.dtype")["enum"]) == get_args(Dtype)
    assert tuple(_spec_field(loramodel_schema, "router.policy")["enum"]) == get_args(
        model_module.RouterPolicySpelling
    )
    assert tuple(_spec_field(loramodel_schema, "upgradeStrategy.type")["enum"]) == get_args(
        model_module.UpgradeType
    )


@pytest.mark.parametrize(
    ("field", "minimum"),
    [
        ("engine.maxLoras", 1),
        ("engine.tensorParallelSize", 1),
        ("engine.maxCpuLoras", 1),
        ("replicas.min", 0),
        ("replicas.max", 0),
        ("resources.accelerator.count", 0),
        ("router.loadBoundFactor", 1),
    ],
)
def test_counts_cannot_be_negative_or_zero_where_that_breaks_serving(
    loramodel_schema: dict[str, Any], field: str, minimum: int
) -> None:
    assert _spec_field(loramodel_schema, field)["minimum"] == minimum


def test_cross_field_rules_have_messages(loramodel_schema: dict[str, Any]) -> None:
    rules = [
        rule
        for _, node in schema_nodes(loramodel_schema, "")
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 10
    for rule in rules:
        assert rule["message"] and rule["rule"]
    root_rules = " ".join(r["rule"] for r in loramodel_schema["x-kubernetes-validations"])
    assert "self.metadata.name.size() <= 63" in root_rules


def test_crd_rules_and_operator_validation_use_the_same_patterns(
    loramodel_schema: dict[str, Any],
) -> None:
    # `lorafleet render` (pydantic) and the API server (CEL / pattern) must agree.
    crd_text = " ".join(
        [
            rule["rule"]
            for _, n in schema_nodes(loramodel_schema, "")
            for rule in n.get("x-kubernetes-validations", [])
        ]
        + [n["pattern"] for _, n in schema_nodes(loramodel_schema, "") if "pattern" in n]
    )
    for pattern in (
        naming.DNS1035_LABEL,
        model_module.DNS1123_SUBDOMAIN,
        model_module.MODEL_ID,
        model_module.BASE_MODEL_SOURCE,
        model_module.QUANTITY,
        model_module.MIG_RESOURCE_NAME,
        model_module.IMAGE_REFERENCE,
    ):
        assert pattern.pattern in crd_text, pattern.pattern


@pytest.mark.parametrize(
    ("field", "bounds", "others"),
    [
        ("engine.maxLoras", (1, 256), {}),
        ("engine.maxCpuLoras", (1, 4096), {"maxLoras": 1}),
        ("engine.maxModelLen", (16, 16777216), {}),
        ("engine.tensorParallelSize", (1, 64), {}),
        ("replicas.min", (0, 1024), {}),
        ("replicas.max", (0, 1024), {"min": 0}),
    ],
)
def test_absurd_counts_are_refused_by_the_crd_and_the_model_alike(
    loramodel_schema: dict[str, Any], field: str, bounds: tuple[int, int], others: dict[str, int]
) -> None:
    node = _spec_field(loramodel_schema, field)
    assert (node["minimum"], node["maximum"]) == bounds
    section, key = field.split(".")
    low, high = bounds
    for value, accepted in ((low - 1, False), (high, True), (high + 1, False)):
        spec = {"baseModel": {"source": "org/model"}, section: {**others, key: value}}
        try:
            model_module.LoRAModelSpec.model_validate(spec)
        except ValueError as error:
            assert not accepted, (field, value, error)
            assert f"{section}.{key}" in str(error)
        else:
            assert accepted, (field, value)


def test_image_rule_has_the_models_message(loramodel_schema: dict[str, Any]) -> None:
    (rule,) = _spec_field(loramodel_schema, "image")["x-kubernetes-validations"]
    assert rule["message"] == model_module.IMAGE_MESSAGE


def test_defaults_match_the_operators_models(loramodel_schema: dict[str, Any]) -> None:
    spec = model_module.LoRAModelSpec.model_validate({"baseModel": {"source": "org/model"}})
    assert _spec_field(loramodel_schema, "engine.maxLoras")["default"] == spec.engine.max_loras
    assert (
        _spec_field(loramodel_schema, "engine.tensorParallelSize")["default"]
        == spec.engine.tensor_parallel_size
    )
    assert _spec_field(loramodel_schema, "engine.dtype")["default"] == spec.engine.dtype
    assert _spec_field(loramodel_schema, "replicas.min")["default"] == spec.replicas.min_replicas
    assert (
        _spec_field(loramodel_schema, "resources.accelerator.resourceName")["default"]
        == spec.resources.accelerator.resource_name
    )
    assert _spec_field(loramodel_schema, "router.policy")["default"] == spec.router.policy
    assert (
        _spec_field(loramodel_schema, "upgradeStrategy.type")["default"]
        == spec.upgrade_strategy.upgrade_type
    )


# ---------------------------------------------------------------- spec.router


def test_router_policy_accepts_the_new_names_then_the_deprecated_ones(
    loramodel_schema: dict[str, Any],
) -> None:
    policy = _spec_field(loramodel_schema, "router.policy")
    assert tuple(policy["enum"]) == (*ROUTER_POLICIES, *DEPRECATED_ROUTER_POLICIES)
    assert policy["default"] == "lorafleet"
    # kubectl explain says what each value does, and which old name stands for which new one.
    for name in policy["enum"]:
        assert name in policy["description"]
    assert "deprecated aliases of lorafleet and ray" in policy["description"]
    assert "ship" not in policy["description"]


def test_router_knobs_say_they_belong_to_policy_lorafleet_and_their_defaults(
    loramodel_schema: dict[str, Any],
) -> None:
    knobs = _spec_field(loramodel_schema, "router")["properties"]
    assert set(model_module.LORAFLEET_POLICY_KNOBS) <= set(knobs)
    for knob in model_module.LORAFLEET_POLICY_KNOBS:
        assert knobs[knob]["description"].startswith("Policy lorafleet only.")
    assert knobs["maxReplicasPerAdapter"]["description"].endswith("Default: all replicas.")
    assert knobs["loadBoundFactor"]["description"].endswith("Default: 1.4.")
    assert knobs["loadBoundFactor"]["maximum"] == model_module.MAX_LOAD_BOUND_FACTOR


def test_router_knobs_with_another_policy_are_refused_with_the_operators_message(
    loramodel_schema: dict[str, Any],
) -> None:
    rules = _spec_field(loramodel_schema, "router")["x-kubernetes-validations"]
    by_message = {rule["message"]: rule["rule"] for rule in rules}
    for knob in model_module.LORAFLEET_POLICY_KNOBS:
        # `lorafleet render` (pydantic) refuses with the same words as the API server.
        rule = by_message[model_module.lorafleet_only_message(knob)]
        assert rule.startswith(f"!has(self.{knob}) ||")
        # Only the new names: a deprecated name with knobs is an old manifest that must apply.
        assert str(list(model_module.POLICIES_IGNORING_KNOBS)) in rule
        assert not any(old in rule for old in DEPRECATED_ROUTER_POLICIES)
