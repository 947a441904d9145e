"""Write docs/crds.md, the field reference of lorafleet's CRDs, from their OpenAPI schemas.

    python tools/crd_docs.py           # rewrite docs/crds.md (what `make crd-docs` runs)
    python tools/crd_docs.py --check   # exit 1 when docs/crds.md differs from the CRDs

The CRDs in crds/ are the one source: every property of every served version gets a row with
its type, default, whether it is required, its description and every constraint the API
server enforces (enum, bounds, lengths, pattern, list semantics, CEL rules with their
messages). A schema keyword this script does not know stops it with an error, so a new kind
of constraint is never dropped from the doc without anyone noticing. The output depends only
on the CRD files (no dates, no environment): the same CRDs always give the same bytes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
CRD_DIR: Final = REPO_ROOT / "crds"
DOC_PATH: Final = REPO_ROOT / "docs" / "crds.md"
COMMAND: Final = "make crd-docs"

Schema = Mapping[str, Any]

# Keywords whose meaning appears in the output; anything else in a schema is an error.
_KNOWN_KEYWORDS: Final = frozenset(
    {
        "additionalProperties",
        "anyOf",
        "default",
        "description",
        "enum",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "format",
        "items",
        "maxItems",
        "maxLength",
        "maxProperties",
        "maximum",
        "minItems",
        "minLength",
        "minProperties",
        "minimum",
        "nullable",
        "pattern",
        "properties",
        "required",
        "type",
        "uniqueItems",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-list-type",
        "x-kubernetes-map-type",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-validations",
    }
)
_KNOWN_RULE_KEYS: Final = frozenset({"rule", "message", "messageExpression", "reason", "fieldPath"})


class SchemaError(ValueError):
    """The CRD holds something this script cannot document faithfully."""


# ---------------------------------------------------------------- Markdown pieces
def code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it holds."""
    text = " ".join(text.split("\n"))
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def prose(text: str) -> str:
    """Description text as Markdown that shows it as written: no emphasis from a stray ``*``,
    no HTML from ``<name>``."""
    text = " ".join(text.split())
    for char, escaped in (("\\", "\\\\"), ("*", "\\*"), ("<", "&lt;")):
        text = text.replace(char, escaped)
    return text


def cell(text: str) -> str:
    """A table cell: GitHub's table syntax needs ``|`` escaped, inside code spans too."""
    return text.replace("|", "\\|")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def value_text(value: Any) -> str:
    """A default or enum value as written in a manifest."""
    if isinstance(value, str) and value:
        return value
    return json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------- one schema node
def check_keywords(path: str, schema: Schema) -> None:
    unknown = sorted(set(schema) - _KNOWN_KEYWORDS)
    if unknown:
        raise SchemaError(
            f"{path or '<root>'}: schema keyword(s) {', '.join(unknown)} are not documented "
            "by tools/crd_docs.py; teach it what they mean"
        )
    for rule in schema.get("x-kubernetes-validations") or ():
        unknown = sorted(set(rule) - _KNOWN_RULE_KEYS)
        if unknown:
            raise SchemaError(f"{path or '<root>'}: CEL rule key(s) {', '.join(unknown)}")
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping) and additional.get("properties"):
        raise SchemaError(f"{path}: additionalProperties with properties is not supported")


def type_label(schema: Schema) -> str:
    """The type as a reader thinks of it: ``integer (int32)``, ``[]object``,
    ``map[string]string``, ``integer or string``."""
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type")
    if kind is None and "anyOf" in schema:
        return " or ".join(type_label(option) for option in schema["anyOf"])
    if kind == "array":
        items = schema.get("items")
        return "[]" + (type_label(items) if isinstance(items, Mapping) else "any")
    if kind == "object":
        additional = schema.get("additionalProperties")
        if isinstance(additional, Mapping):
            return "map[string]" + type_label(additional)
        if additional is True:
            return "map[string]any"
        if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
            return "object (free-form)"
        return "object"
    label = str(kind or "any")
    return f"{label} ({schema['format']})" if "format" in schema else label


def _bounds(schema: Schema, low: str, high: str, unit: str) -> str | None:
    minimum, maximum = schema.get(low), schema.get(high)
    if minimum is not None and maximum is not None:
        return f"{minimum} to {maximum} {unit}"
    if minimum is not None:
        return f"at least {minimum} {unit}"
    if maximum is not None:
        return f"at most {maximum} {unit}"
    return None


def value_constraints(schema: Schema) -> list[str]:
    """What the API server checks on this value itself (not its items or fields)."""
    found: list[str] = []
    if "enum" in schema:
        found.append("One of " + ", ".join(code(value_text(v)) for v in schema["enum"]) + ".")
    for bound, exclusive_key, words in (
        ("minimum", "exclusiveMinimum", ("At least", "Greater than")),
        ("maximum", "exclusiveMaximum", ("At most", "Less than")),
    ):
        exclusive = schema.get(exclusive_key)
        if bound in schema:
            word = words[1] if exclusive is True else words[0]
            found.append(f"{word} {code(str(schema[bound]))}.")
        elif isinstance(exclusive, int | float) and not isinstance(exclusive, bool):
            found.append(f"{words[1]} {code(str(exclusive))}.")
    for low, high, unit in (
        ("minLength", "maxLength", "characters"),
        ("minItems", "maxItems", "items"),
        ("minProperties", "maxProperties", "entries"),
    ):
        bounds = _bounds(schema, low, high, unit)
        if bounds:
            found.append(bounds[0].upper() + bounds[1:] + ".")
    if "pattern" in schema:
        found.append(f"Matches {code(schema['pattern'])}.")
    if schema.get("uniqueItems"):
        found.append("Items are unique.")
    if schema.get("nullable"):
        found.append("May be null.")
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = ", ".join(code(k) for k in schema.get("x-kubernetes-list-map-keys") or ())
        found.append(f"List type {code('map')} keyed by {keys}: one item per key.")
    elif list_type == "set":
        found.append(f"List type {code('set')}: items are unique.")
    elif list_type == "atomic":
        found.append(f"List type {code('atomic')}: replaced as a whole on apply.")
    map_type = schema.get("x-kubernetes-map-type")
    if map_type:
        found.append(f"Map type {code(map_type)}.")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        found.append("Unknown fields are kept as written (x-kubernetes-preserve-unknown-fields).")
    for rule in schema.get("x-kubernetes-validations") or ():
        found.append(rule_text(rule))
    return found


def rule_text(rule: Mapping[str, Any]) -> str:
    text = f"Rule {code(rule['rule'])}"
    if "message" in rule:
        text += f": {prose(rule['message'])}"
    if "messageExpression" in rule:
        text += f" (message: {code(rule['messageExpression'])})"
    if "fieldPath" in rule:
        text += f" (reported at {code(rule['fieldPath'])})"
    if "reason" in rule:
        text += f" (reason {code(rule['reason'])})"
    return text


def description_cell(schema: Schema) -> str:
    parts = [prose(schema["description"])] if schema.get("description") else []
    parts += value_constraints(schema)
    items = schema.get("items")
    if isinstance(items, Mapping):
        if items.get("description"):
            parts.append("Each item: " + prose(items["description"]))
        parts += ["Each item: " + text for text in value_constraints(items)]
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        parts += ["Each value: " + text for text in value_constraints(additional)]
    return "<br>".join(parts)


# ---------------------------------------------------------------- walking a schema
def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def object_levels(path: str, schema: Schema) -> Iterator[tuple[str, Schema]]:
    """Every object with properties, each before the objects inside it, in schema order.
    Array items are addressed as ``path[]``."""
    check_keywords(path, schema)
    for option in schema.get("anyOf") or ():
        check_keywords(path, option)
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        check_keywords(path + ".*", additional)
    properties = schema.get("properties") or {}
    if properties:
        yield path, schema
        for name, child in properties.items():
            yield from object_levels(join(path, name), child)
    items = schema.get("items")
    if isinstance(items, Mapping):
        yield from object_levels(path + "[]", items)


def field_rows(path: str, schema: Schema) -> list[list[str]]:
    required = set(schema.get("required") or ())
    rows = []
    for name, child in (schema.get("properties") or {}).items():
        rows.append(
            [
                code(join(path, name)),
                type_label(child),
                code(value_text(child["default"])) if "default" in child else "",
                "yes" if name in required else "",
                description_cell(child),
            ]
        )
    return rows


# ---------------------------------------------------------------- one CRD version
def _names_line(crd: Mapping[str, Any], version: Mapping[str, Any]) -> str:
    spec = crd["spec"]
    names = spec["names"]
    flags = [word for word in ("served", "storage") if version.get(word)]
    parts = [
        code(f"{spec['group']}/{version['name']}"),
        f"{spec.get('scope', 'Namespaced').lower()}",
        f"{code('kubectl get ' + names['plural'])} (singular {code(names['singular'])}"
        + "".join(f", short name {code(short)}" for short in names.get("shortNames") or ())
        + "".join(f", category {code(cat)}" for cat in names.get("categories") or ())
        + ")",
    ]
    subresources = sorted(version.get("subresources") or {})
    if subresources:
        parts.append("subresources: " + ", ".join(code(sub) for sub in subresources))
    if flags:
        parts.append(" and ".join(flags) + " version")
    return " · ".join(parts)


def render_version(crd: Mapping[str, Any], version: Mapping[str, Any]) -> list[str]:
    kind = crd["spec"]["names"]["kind"]
    root: Schema = version["schema"]["openAPIV3Schema"]
    has_status_subresource = "status" in (version.get("subresources") or {})
    lines = [f"## {kind} {version['name']}", "", _names_line(crd, version), ""]
    if root.get("description"):
        lines += [prose(root["description"]), ""]
    if version.get("deprecated"):
        warning = version.get("deprecationWarning") or "This version is deprecated."
        lines += [f"**Deprecated:** {prose(warning)}", ""]
    rules = root.get("x-kubernetes-validations") or ()
    if rules:
        lines += ["Rules on the whole object, checked by the API server on create and update:", ""]
        lines += [f"- {rule_text(rule)}" for rule in rules]
        lines.append("")
    columns = version.get("additionalPrinterColumns") or ()
    if columns:
        plural = crd["spec"]["names"]["plural"]
        lines += [f"### Columns of `kubectl get {plural}`", ""]
        rows = [
            [
                column["name"]
                + (
                    f" (priority {column['priority']}: `-o wide`)" if column.get("priority") else ""
                ),
                column["type"] + (f" ({column['format']})" if column.get("format") else ""),
                code(column["jsonPath"]),
                prose(column.get("description", "")),
            ]
            for column in columns
        ]
        lines += table(["Column", "Type", "JSONPath", "Description"], rows)
        lines.append("")
    for path, schema in object_levels("", root):
        title = "Top level" if not path else code(path)
        is_status = path == "status" or path.startswith(("status.", "status["))
        if is_status:
            title += " (written by the operator)"
        lines += [f"### {title}", ""]
        if path == "status":
            note = "Everything under `status` is written by the operator"
            if has_status_subresource:
                note += " through the status subresource: what a manifest puts there is ignored"
            lines += [note + ".", ""]
        header = ["Field", "Type", "Default", "Required", "Description"]
        lines += table(header, field_rows(path, schema))
        lines.append("")
    return lines


def render(crds: Sequence[Mapping[str, Any]]) -> str:
    """The whole of docs/crds.md for these CRDs (in the order given)."""
    kinds = ", ".join(
        f"{crd['spec']['names']['kind']} ({code(crd['metadata']['name'])})" for crd in crds
    )
    lines = [
        "# CRD reference",
        "",
        f"_Generated from `crds/*.yaml` by `{COMMAND}` (`python tools/crd_docs.py`); "
        "do not edit by hand._",
        "",
        f"Every field of lorafleet's custom resources: {kinds}. Paths are written as in "
        "`kubectl explain` (`spec.engine.maxLoras`); `[]` stands for each item of a list. "
        "Constraints under a description are enforced by the API server at `kubectl apply` "
        "time; CEL rules are quoted with the message the API server returns.",
        "",
    ]
    for crd in crds:
        for version in crd["spec"]["versions"]:
            lines += render_version(crd, version)
    return "\n".join(lines).rstrip("\n") + "\n"


def load_crds(crd_dir: Path) -> list[dict[str, Any]]:
    """The CRDs in ``crd_dir``, by file name."""
    crds = []
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            raise SchemaError(f"{path} is not a CustomResourceDefinition")
        crds.append(crd)
    if not crds:
        raise SchemaError(f"no CRDs in {crd_dir}")
    return crds


def render_crd_dir(crd_dir: Path = CRD_DIR) -> str:
    return render(load_crds(crd_dir))


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (messages stay short)."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/crd_docs.py",
        description="Write docs/crds.md from the CRDs in crds/ (what `make crd-docs` runs).",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the doc differs from the CRDs"
    )
    parser.add_argument("--crd-dir", type=Path, default=CRD_DIR, help="default: crds/")
    parser.add_argument("--doc", type=Path, default=DOC_PATH, help="default: docs/crds.md")
    args = parser.parse_args(argv)
    try:
        text = render_crd_dir(args.crd_dir)
    except (SchemaError, OSError, yaml.YAMLError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    doc: Path = args.doc
    shown = _shown(doc)
    if args.check:
        current = doc.read_text() if doc.exists() else None
        if current != text:
            sys.stderr.write(
                f"{shown} is stale: it does not match the CRDs in {_shown(args.crd_dir)}. "
                f"Run `{COMMAND}` and commit the result.\n"
            )
            return 1
        sys.stdout.write(f"{shown} matches the CRDs\n")
        return 0
    doc.write_text(text)
    sys.stdout.write(f"Wrote {shown}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
