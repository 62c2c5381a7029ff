"""Request options -> the constraint of a request (`ConstraintSpec`), or None when nothing is.

The one entry point of the API layer (chat completions, completions, and later the Responses
API's `text.format` / `tool_choice`):

    build_constraint(response_format=..., structured_outputs=..., tools=..., tool_choice=...,
                     parallel_tool_calls=..., max_reasoning_tokens=...) -> ConstraintSpec | None
    build_text_constraint(response_format=..., structured_outputs=...) -> ConstraintSpec | None
    check_tools(tools)

Options are plain dicts in the OpenAI shapes (`response_format` {"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}, vLLM's `structured_outputs` {"json" | "regex" |
"choice" | "grammar" | "json_object"}). Every problem is an `InvalidRequestError` naming the
parameter (`response_format.json_schema.schema`, `tools[i].function.parameters`, ...). Must not
know HTTP, the engine or the sampler.
"""

from __future__ import annotations

import json
from typing import Any

from gptoss_serve.constrain.grammar import Content, harmony_grammar, json_content, text_grammar
from gptoss_serve.constrain.matcher import ConstraintSpec, GrammarError
from gptoss_serve.constrain.schema import check_schema
from gptoss_serve.errors import InvalidRequestError

STRUCTURED_KEYS = ("json", "regex", "choice", "grammar", "json_object")
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def check_tools(tools: list[dict[str, Any]] | None) -> None:
    """Every function's `parameters` must be a usable JSON Schema (400 naming the tool)."""
    for i, tool in enumerate(tools or []):
        params = (tool.get("function") or {}).get("parameters")
        if params is not None:
            check_schema(params, f"tools[{i}].function.parameters")


def _response_format_content(response_format: dict[str, Any] | None) -> Content | None:
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return json_content(ANY_OBJECT)
    if kind != "json_schema":
        raise InvalidRequestError(f"unsupported response_format type {kind!r}",
                                  param="response_format.type")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequestError("response_format json_schema needs a `json_schema` object",
                                  param="response_format.json_schema")
    schema = spec.get("schema")
    if schema is None:
        schema = ANY_OBJECT  # OpenAI: a json_schema format without a schema is any object
    check_schema(schema, "response_format.json_schema.schema")
    return json_content(schema)


def _structured_content(so: dict[str, Any] | None) -> Content | None:
    if not so:
        return None
    if not isinstance(so, dict):
        raise InvalidRequestError("structured_outputs must be an object",
                                  param="structured_outputs")
    given = [k for k in STRUCTURED_KEYS if so.get(k) not in (None, False)]
    unknown = sorted(set(so) - set(STRUCTURED_KEYS) - {"disable_fallback", "whitespace_pattern",
                                                        "disable_any_whitespace",
                                                        "disable_additional_properties"})
    if unknown:
        raise InvalidRequestError(f"unknown structured_outputs field {unknown[0]!r}",
                                  param=f"structured_outputs.{unknown[0]}")
    if len(given) != 1:
        raise InvalidRequestError(
            "structured_outputs needs exactly one of json, regex, choice, grammar, json_object",
            param="structured_outputs")
    key = given[0]
    value = so[key]
    param = f"structured_outputs.{key}"
    if key == "json_object":
        return json_content(ANY_OBJECT)
    if key == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise InvalidRequestError(f"`{param}` is not JSON: {exc}", param=param) from None
        check_schema(value, param)
        return json_content(value)
    if key == "choice":
        if (not isinstance(value, list) or not value
                or not all(isinstance(c, str) for c in value)):
            raise InvalidRequestError(f"`{param}` must be a non-empty list of strings",
                                      param=param)
        return Content("choice", json.dumps(value))
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"`{param}` must be a non-empty string", param=param)
    return Content("regex" if key == "regex" else "lark", value)


def _content(response_format: dict[str, Any] | None,
             structured_outputs: dict[str, Any] | None) -> tuple[Content | None, str]:
    a = _response_format_content(response_format)
    b = _structured_content(structured_outputs)
    if a is not None and b is not None:
        raise InvalidRequestError("give either response_format or structured_outputs, not both",
                                  param="structured_outputs")
    if b is not None:
        return b, f"structured_outputs.{_first_key(structured_outputs or {})}"
    return a, "response_format"


def _first_key(so: dict[str, Any]) -> str:
    return next(k for k in STRUCTURED_KEYS if so.get(k) not in (None, False))


def _spec(grammar: str, param: str, **kw: Any) -> ConstraintSpec:
    try:
        return ConstraintSpec(grammar, **kw)
    except GrammarError as exc:
        raise InvalidRequestError(f"`{param}` cannot be enforced: {exc}", param=param) from None


def _calls(tools: list[dict[str, Any]] | None, tool_choice: Any) -> tuple[list[tuple[str, Content]],
                                                                          bool]:
    """(the functions that may be called, whether a call is required)."""
    declared = [t.get("function") or {} for t in tools or []]
    if tool_choice == "none" or not declared and tool_choice in (None, "auto"):
        return [], False
    every = [(f["name"], json_content(f.get("parameters") or ANY_OBJECT)) for f in declared]
    if tool_choice in (None, "auto"):
        return every, False
    if not declared:
        raise InvalidRequestError("tool_choice needs `tools` to choose from", param="tool_choice")
    if tool_choice == "required":
        return every, True
    name = ((tool_choice or {}).get("function") or {}).get("name") \
        if isinstance(tool_choice, dict) else None
    chosen = [c for c in every if c[0] == name]
    if not chosen:
        names = ", ".join(c[0] for c in every)
        raise InvalidRequestError(f"tool_choice names function {name!r}, which is not among the "
                                  f"declared tools ({names})", param="tool_choice.function.name")
    return chosen, True


def build_constraint(*, response_format: dict[str, Any] | None = None,
                     structured_outputs: dict[str, Any] | None = None,
                     tools: list[dict[str, Any]] | None = None, tool_choice: Any = None,
                     parallel_tool_calls: bool | None = None,
                     max_reasoning_tokens: int | None = None) -> ConstraintSpec | None:
    """The constraint of a harmony (chat) completion; None when the request constrains nothing.

    The final message follows `response_format`/`structured_outputs`; `tool_choice` "required"
    or named forces a call (arguments valid for the function's parameters); with any constraint,
    calls to declared functions have valid arguments. A harmony turn ends at its first call, so
    there is never more than one call and `parallel_tool_calls` false holds by construction.
    `max_reasoning_tokens` caps the prelude (analysis and preamble) tokens."""
    del parallel_tool_calls  # one call per turn either way (see above)
    check_tools(tools)
    content, param = _content(response_format, structured_outputs)
    calls, required = _calls(tools, tool_choice)
    if content is None and not required and max_reasoning_tokens is None:
        return None
    final = None if required else (content or Content("free"))
    after = None
    if max_reasoning_tokens is not None:
        after = harmony_grammar(final, calls, allow_preludes=False)
    return _spec(harmony_grammar(final, calls), param, max_reasoning_tokens=max_reasoning_tokens,
                 after_budget=after)


def build_text_constraint(*, response_format: dict[str, Any] | None = None,
                          structured_outputs: dict[str, Any] | None = None
                          ) -> ConstraintSpec | None:
    """The constraint of raw text from the first token (/v1/completions); None when none."""
    content, param = _content(response_format, structured_outputs)
    if content is None:
        return None
    return _spec(text_grammar(content), param, harmony=False)
