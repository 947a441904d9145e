"""The Helm chart's files agree with the code: CRD copies, versions, documented values and
a schema that refuses what a user could mistype. (Rendering is tested with the real helm in
tests/integration/test_chart_render.py.)"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from lorafleet_operator.constants import DEFAULT_RUNTIME_IMAGE

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lorafleet"


def _values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def _schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text()))


def test_the_chart_ships_exact_copies_of_our_crds_and_never_kuberays() -> None:
    ours = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").iterdir())
    assert shipped == ours, "charts/lorafleet/crds/ must hold exactly crds/*.yaml (cp crds/*.yaml)"
    for name in ours:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/lorafleet/crds/{name} drifted from crds/{name}: copy it again"
        )
    for path in (CHART / "crds").iterdir():
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["spec"]["group"] == "lorafleet.dev"


def test_app_version_is_the_operator_version_and_the_default_runtime_image_tag() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    assert f"{_values()['runtimeImage']['repository']}:{version}" == DEFAULT_RUNTIME_IMAGE
    assert "dependencies" not in chart, "the chart must install without network access"


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        out = []
        for key, value in node.items():
            out += _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return out
    return [prefix]


def test_every_value_is_documented_with_a_helm_docs_comment() -> None:
    """helm-docs reads `# --` on the line(s) just above a key. Maps documented as a whole
    (resources, securityContext) count as one value."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_whole = {"resources", "podSecurityContext", "securityContext"}
    undocumented = []
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        is_map = rest == "" and path not in documented_whole
        if any(path.startswith(whole + ".") for whole in documented_whole) or is_map:
            continue
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#") and "# --" not in lines[above]:
            above -= 1
        if above < 0 or "# --" not in lines[above]:
            undocumented.append(path)
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


def test_the_defaults_satisfy_the_schema_and_every_value_is_in_it() -> None:
    schema = _schema()
    jsonschema.validate(_values(), schema)
    for path in _leaf_paths(_values()):
        node = schema
        for key in path.split("."):
            if "properties" in node and key in node["properties"]:
                node = node["properties"][key]
            else:
                assert node.get("additionalProperties", True) is not False, (
                    f"{path} is in values.yaml but not in values.schema.json"
                )
                break


@pytest.mark.parametrize(
    ("override", "what"),
    [
        ({"imgae": {"tag": "x"}}, "imgae"),
        ({"image": {"tga": "x"}}, "tga"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
        ({"operator": {"logFormat": "xml"}}, "xml"),
        ({"operator": {"driftCheckSeconds": 0}}, "0"),
        ({"watchNamespaces": ["Team_A"]}, "Team_A"),
        ({"image": {"repository": "r", "digest": "latest"}}, "latest"),
        ({"metrics": {"port": 70000}}, "70000"),
    ],
)
def test_the_schema_refuses_typos_and_impossible_values(
    override: dict[str, Any], what: str
) -> None:
    values = _values()
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = _merge(values[key], value)
        else:
            values[key] = value
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.validate(values, _schema())
    assert what in str(refused.value.message) or what in str(refused.value.instance)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
