"""JSON Schema checks for structured outputs and tool parameters: a bad schema is a 400 naming it.

A schema must be a valid JSON Schema (its metaschema, by `jsonschema`) and must use only what the
grammar compiler implements (llguidance, not lenient: `if`, `uniqueItems`, ... are refused rather
than silently ignored). Owns these checks and their messages; must not know HTTP or the engine.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import llguidance

from gptoss_serve.errors import InvalidRequestError

# no whitespace between JSON tokens: as compact as json.dumps(separators=(",", ":")), and a model
# cannot spend its tokens on blanks
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}


def _as_object(schema: Any) -> Any:
    """The boolean schema `true` (anything) as the object schema `{}`; others unchanged."""
    return {} if schema is True else schema


def json_subgrammar(schema: Any, name: str) -> dict[str, Any]:
    """An llguidance grammar-list entry (named `name`) for `schema`; no validity check."""
    text = llguidance.LLMatcher.grammar_from_json_schema(_as_object(schema),
                                                         overrides=JSON_OPTIONS)
    entry = json.loads(text)["grammars"][0]
    entry["name"] = name
    return entry


def check_schema(schema: Any, param: str) -> None:
    """Raise InvalidRequestError(param=param) unless `schema` is a usable JSON Schema."""
    if not isinstance(schema, dict | bool):
        raise InvalidRequestError(f"`{param}` must be a JSON Schema object", param=param)
    if schema is False:
        raise InvalidRequestError(f"`{param}` is `false`, which no output satisfies", param=param)
    schema = _as_object(schema)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        at = f" at `{where}`" if where else ""
        raise InvalidRequestError(f"`{param}` is not a valid JSON Schema{at}: {exc.message}",
                                  param=param) from None
    except Exception as exc:  # e.g. an unknown $schema dialect
        raise InvalidRequestError(f"`{param}` is not a valid JSON Schema: {exc}",
                                  param=param) from None
    try:
        text = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise InvalidRequestError(f"`{param}`: {exc}", param=param) from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text)
    if is_error:
        raise InvalidRequestError(
            f"`{param}` cannot be enforced: {messages[0] if messages else 'invalid schema'}",
            param=param)
