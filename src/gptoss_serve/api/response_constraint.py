"""The Responses API's constrained decoding: `text.format` (json_schema / json_object), a
forced `tool_choice` (required / a named function) and a reasoning budget -> the run's
`SamplingParams.constraint`.

Owns the checks of these options (a forced tool must be declared; neither combines with the
built-in tools, whose calls the grammar does not cover) and the translation to the shapes of
`constrain.build_constraint` (the chat `response_format` and `tool_choice`), whose 400s are
renamed to this API's fields. Knows nothing of HTTP, the loop or the store.
"""

from __future__ import annotations

import re
from typing import Any

from gptoss_serve.api.responses_schemas import BUILTIN_TYPES, ResponsesRequest, ToolChoiceObject
from gptoss_serve.constrain import build_constraint
from gptoss_serve.errors import InvalidRequestError


def run_constraint(req: ResponsesRequest, default_budget: int | None = None) -> Any:
    """The constraint of every model call of the run, or None when nothing is constrained.
    `max_reasoning_tokens` (our extension, as in chat; else the server's default, which is not
    applied to runs with built-in tools) caps the reasoning before the answer."""
    check_tool_choice(req)
    fmt = req.format_dict()
    forced = req.tool_choice == "required" or isinstance(req.tool_choice, ToolChoiceObject)
    budget = req.max_reasoning_tokens
    if budget is None and not req.builtin_types():
        budget = default_budget
    if fmt is None and not forced and budget is None:
        return None
    param = "text.format" if fmt is not None else (
        "tool_choice" if forced else "max_reasoning_tokens")
    if req.builtin_types():
        raise InvalidRequestError(
            "text.format, a forced tool_choice and max_reasoning_tokens cannot be combined with "
            "the built-in tools (code_interpreter, web_search)", param=param)
    choice: Any = req.tool_choice
    if isinstance(choice, ToolChoiceObject):
        choice = {"type": "function", "function": {"name": choice.name}}
    try:
        return build_constraint(response_format=fmt, tools=req.function_tools(),
                                tool_choice=choice, parallel_tool_calls=req.parallel_tool_calls,
                                max_reasoning_tokens=budget)
    except InvalidRequestError as exc:
        renamed = responses_param(exc.param)
        if exc.param and renamed:
            exc.message = exc.message.replace(exc.param, renamed)
        exc.param = renamed
        raise


def responses_param(param: str | None) -> str | None:
    """A chat parameter name as this API spells it (`tools[2].function.parameters` ->
    `tools.2.parameters`, `response_format.json_schema.schema` -> `text.format.schema`)."""
    if param is None:
        return None
    param = re.sub(r"^tools\[(\d+)\]\.function\.", r"tools.\1.", param)
    param = param.replace("tool_choice.function.name", "tool_choice.name")
    return re.sub(r"^response_format(\.json_schema)?", "text.format", param)


def check_tool_choice(req: ResponsesRequest) -> None:
    """A forced tool must be one the request declares."""
    choice = req.tool_choice
    if choice == "required" and not req.tools:
        raise InvalidRequestError("tool_choice 'required' needs tools", param="tool_choice")
    if not isinstance(choice, ToolChoiceObject):
        return
    if choice.type == "function":
        names = {t.name for t in req.tools if t.type == "function"}
        if choice.name not in names:
            raise InvalidRequestError(f"tool_choice names the function {choice.name!r}, which "
                                      "`tools` does not declare", param="tool_choice.name")
    elif choice.type in BUILTIN_TYPES:
        if BUILTIN_TYPES[choice.type] not in req.builtin_types():
            raise InvalidRequestError(f"tool_choice {choice.type!r} is not among `tools`",
                                      param="tool_choice.type")
    else:
        raise InvalidRequestError(f"unsupported tool_choice type {choice.type!r}",
                                  param="tool_choice.type")
