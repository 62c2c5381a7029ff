"""Tool declarations as harmony's TypeScript-like `# Tools` section (docs/model-facts.md §5.4).

Owns: JSON schema -> TypeScript type text, and the `# Tools` section for a set of namespaces,
character for character as openai-harmony 0.0.8 writes them (its output is the test oracle).
Must not know: tokens, messages, OpenAI request shapes.

Follows openai/harmony `src/encoding.rs: template_tools_section, json_schema_to_typescript`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class Namespace:
    name: str
    description: str | None
    tools: tuple[ToolSpec, ...]


def _get(schema: Any, key: str) -> Any:
    return schema.get(key) if isinstance(schema, dict) else None


def _json(value: Any) -> str:
    """Compact JSON, as serde_json prints a value."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def rust_lines(text: str) -> list[str]:
    """Lines as Rust's `str::lines` splits them (only \\n, an optional \\r before it)."""
    if not text:
        return []
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()
    return [p[:-1] if p.endswith("\r") else p for p in parts]


def _is_enum(schema: Any) -> bool:
    values = _get(schema, "enum")
    return isinstance(values, list) and bool(values)


def _default_text(default: Any, schema: Any) -> str:
    """A default as harmony prints it: a non-enum string quoted, an enum string bare, else JSON."""
    if isinstance(default, str):
        return default if _is_enum(schema) else f'"{default}"'
    return _json(default)


def _with_null(type_text: str, schema: Any) -> str:
    if _get(schema, "nullable") is True and "null" not in type_text:
        return f"{type_text} | null"
    return type_text


def _one_of(variants: list[Any], indent: str) -> str:
    out = ""
    for variant in variants:
        out += f"\n{indent} | " + _with_null(to_typescript(variant, indent + "   "), variant)
        comments = []
        if isinstance(_get(variant, "description"), str):
            comments.append(variant["description"])
        if isinstance(variant, dict) and "default" in variant:
            default = variant["default"]
            plain = isinstance(default, str) and not _is_enum(variant)
            comments.append(f'default: "{default}"' if plain else f"default: {_json(default)}")
        if comments:
            out += " // " + " ".join(comments)
    return out


def _prop_one_of(key: str, opt: str, val: dict, variants: list, indent: str) -> str:
    """A property whose schema is a oneOf: comments above, one ` | variant` line each."""
    desc = val.get("description") if isinstance(val.get("description"), str) else None
    first_desc = _get(variants[0], "description") if variants else None
    above = desc is not None and desc != first_desc
    out = f"{indent}// {desc}\n" if above else ""
    if "default" in val:
        out += f"{indent}// default: {_default_text(val['default'], val)}\n"
    out += f"{indent}{key}{opt}:\n"
    for i, variant in enumerate(variants):
        out += f"{indent} | " + _with_null(to_typescript(variant, indent + "   "), variant)
        comments = []
        vdesc = _get(variant, "description")
        if not (i == 0 and above) and isinstance(vdesc, str) and vdesc != desc:
            comments.append(vdesc)
        if isinstance(variant, dict) and "default" in variant:
            comments.append(f"default: {_default_text(variant['default'], variant)}")
        out += (" // " + " ".join(comments) if comments else "") + "\n"
    return out + f"{indent},\n"


def _property(key: str, val: Any, required: set[str], indent: str) -> str:
    opt = "" if key in required else "?"
    out = ""
    if isinstance(_get(val, "title"), str):
        out += f"{indent}// {val['title']}\n{indent}//\n"
    if _get(val, "oneOf") is None and isinstance(_get(val, "description"), str):
        out += f"{indent}// {val['description']}\n"
    examples = _get(val, "examples")
    if isinstance(examples, list) and examples:
        out += f"{indent}// Examples:\n"
        out += "".join(f'{indent}// - "{ex}"\n' for ex in examples if isinstance(ex, str))
    if isinstance(_get(val, "oneOf"), list):
        return out + _prop_one_of(key, opt, val, val["oneOf"], indent)
    out += f"{indent}{key}{opt}: " + _with_null(to_typescript(val, indent + "    "), val) + ","
    if _get(val, "oneOf") is None and isinstance(val, dict) and "default" in val:
        out += f" // default: {_default_text(val['default'], val)}"
    return out + "\n"


def _object(schema: dict, indent: str) -> str:
    out = f"{indent}// {schema['description']}\n" if isinstance(
        schema.get("description"), str) else ""
    out += "{\n"
    props = schema.get("properties")
    if isinstance(props, dict):
        req = schema.get("required")
        required = {r for r in req if isinstance(r, str)} if isinstance(req, list) else set()
        out += "".join(_property(k, v, required, indent) for k, v in props.items())
    return out + f"{indent}}}"


def _scalar(schema: dict, kind: str, indent: str) -> str:
    if kind == "string":
        values = schema.get("enum") if isinstance(schema.get("enum"), list) else []
        quoted = [f'"{v}"' for v in values if isinstance(v, str)]
        return " | ".join(quoted) if quoted else "string"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "array":
        return to_typescript(schema["items"], indent) + "[]" if "items" in schema else "Array<any>"
    return "any"


def to_typescript(schema: Any, indent: str = "") -> str:
    """The TypeScript-like type harmony writes for a JSON schema."""
    if isinstance(_get(schema, "oneOf"), list):
        return _one_of(schema["oneOf"], indent)
    kind = _get(schema, "type")
    if isinstance(kind, list):
        names = ["number" if k == "integer" else k for k in kind if isinstance(k, str)]
        if names:
            return " | ".join(names)
    if isinstance(kind, str):
        return _object(schema, indent) if kind == "object" else _scalar(schema, kind, indent)
    return "any"


def _namespace_block(ns: Namespace) -> str:
    parts = [f"## {ns.name}\n"]
    for line in rust_lines(ns.description or ""):
        parts.append(f"// {line}" if ns.tools else line)
    if ns.tools:
        parts.append(f"namespace {ns.name} {{\n")
        for tool in ns.tools:
            parts += [f"// {line}" for line in rust_lines(tool.description)]
            if tool.parameters is None:
                parts.append(f"type {tool.name} = () => any;\n")
            else:
                parts.append(f"type {tool.name} = (_: {to_typescript(tool.parameters)}) => any;\n")
        parts.append(f"}} // namespace {ns.name}")
    return "\n".join(parts)


def tools_section(namespaces: list[Namespace]) -> str:
    """`# Tools` followed by each namespace (sorted by name), blocks separated by a blank line."""
    blocks = [_namespace_block(ns) for ns in sorted(namespaces, key=lambda ns: ns.name)]
    return "\n\n".join(["# Tools", *blocks])


def namespace_from_dict(data: dict[str, Any]) -> Namespace:
    """A namespace from the {name, description, tools: [{name, description, parameters}]} shape."""
    tools = tuple(ToolSpec(t["name"], t.get("description") or "", t.get("parameters"))
                  for t in data.get("tools", []))
    return Namespace(data["name"], data.get("description"), tools)
