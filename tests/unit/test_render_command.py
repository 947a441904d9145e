"""`lorafleet render` prints the RayService a LoRAModel becomes, with no cluster, and refuses
bad input with a message and a non-zero exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml
from click.testing import CliRunner

from lorafleet_cli.main import main
from lorafleet_testbed.toolchain import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"


def _render(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(main, ["render", *args], input=stdin)


def test_every_example_renders_a_valid_rayservice(rayservice_schema: dict[str, Any]) -> None:
    examples = sorted(EXAMPLES.rglob("lora-model*.yaml"))
    assert examples
    for example in examples:
        result = _render("-f", str(example))
        assert result.exit_code == 0, result.output
        *rbac, rayservice = list(yaml.safe_load_all(result.output))
        assert rayservice["kind"] == "RayService"
        jsonschema.validate(rayservice, rayservice_schema)
        assert "ownerReferences" not in rayservice["metadata"]
        pods = [rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]]
        pods += [
            g["template"]["spec"]
            for g in rayservice["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])
        ]
        accounts = {pod["serviceAccountName"] for pod in pods}
        if rbac:
            assert [o["kind"] for o in rbac] == ["ServiceAccount", "Role", "RoleBinding"]
            assert accounts == {rbac[0]["metadata"]["name"]}
        else:  # spec.serviceAccountName names the user's own
            assert len(accounts) == 1
        only = _render("-f", str(example), "--no-rbac")
        assert [d["kind"] for d in yaml.safe_load_all(only.output)] == ["RayService"]


def test_render_is_byte_stable_and_follows_the_image_flag() -> None:
    example = str(EXAMPLES / "lora-model.yaml")
    first, second = _render("-f", example), _render("-f", example)
    assert first.output == second.output
    custom = _render("-f", str(EXAMPLES / "lora-model-minimal.yaml"), "--image", "my/img:1")
    assert "image: my/img:1" in custom.output


def test_catalog_status_given_with_f_sets_the_rank_default(tmp_path: Path) -> None:
    catalog = {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "AdapterCatalog",
        "metadata": {"name": "support-adapters"},
        "status": {"rankHistogram": {"8": 3, "48": 1}},
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    result = _render("-f", str(EXAMPLES / "lora-model-minimal.yaml"), "-f", str(path))
    assert result.exit_code == 0, result.output
    rayservice = list(yaml.safe_load_all(result.output))[-1]
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"]["engine"]["max_lora_rank"] == 64


def test_invalid_input_fails_with_a_message() -> None:
    bad = yaml.safe_dump(
        {
            "apiVersion": "lorafleet.dev/v1alpha1",
            "kind": "LoRAModel",
            "metadata": {"name": "m"},
            "spec": {"baseModel": {"source": "x/y"}, "engine": {"maxLoras": 0}},
        }
    )
    result = _render("-f", "-", stdin=bad)
    assert result.exit_code == 1
    assert result.output == (
        "Error: LoRAModel m: spec.engine.maxLoras: Input should be greater than or equal to 1\n"
    )

    nothing = _render("-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert nothing.exit_code != 0
    assert "no LoRAModel found" in nothing.output

    broken = _render("-f", "-", stdin="spec: [unclosed")
    assert broken.exit_code != 0
    assert "not valid YAML" in broken.output


def test_render_refuses_what_the_api_server_refuses_with_the_same_words() -> None:
    """The CRD's CEL messages (tests/integration/test_invalid_manifests.py applies the same
    manifests to a real API server) and what `lorafleet render` says agree."""
    model = {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": "m"},
        "spec": {"baseModel": {"source": "x/y"}, "image": "Lorafleet/Runtime:1"},
    }
    result = _render("-f", "-", stdin=yaml.safe_dump(model))
    assert result.exit_code == 1
    assert "spec.image: image must be a container image reference like " in result.output
    model["spec"] = {"baseModel": {"source": "x/y"}, "engine": {"extraArgs": {"--MAX-LORAS": 2}}}
    result = _render("-f", "-", stdin=yaml.safe_dump(model))
    assert result.exit_code == 1
    assert (
        "spec.engine: engine.extraArgs may not set --MAX-LORAS: lorafleet sets max_loras from "
        "engine.maxLoras; remove it from engine.extraArgs" in result.output
    )
