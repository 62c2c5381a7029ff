"""The shapes of the bodies the `/v1/responses` routes send, as pydantic models, so that
/openapi.json describes them (`openapi.responses_of` per route, as `bodies.py` does for chat).

The response object's top-level fields are typed and closed (`extra="forbid"`); output items,
usage, tools and the like are JSON objects whose exact shapes are the openai package's (the
tests validate bodies and events against its models). A stream event is any object with a `type`
and a `sequence_number`. Knows nothing of how the values are computed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from gptoss_serve.api.bodies import Body

JSON = dict[str, Any]


class ResponseObject(Body):
    id: str
    object: Literal["response"]
    created_at: float
    status: Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
    background: bool
    error: JSON | None
    incomplete_details: JSON | None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    metadata: dict[str, str]
    model: str
    output: list[JSON]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: JSON
    store: bool
    temperature: float
    text: JSON
    tool_choice: str | JSON
    tools: list[JSON]
    top_p: float
    truncation: str
    usage: JSON | None
    user: str | None


class ResponseStreamEvent(BaseModel):
    """One server-sent event (`event: TYPE`, `data: this`); its other fields depend on `type`."""

    model_config = ConfigDict(extra="allow")
    type: str
    sequence_number: int


class InputItemList(Body):
    object: Literal["list"]
    data: list[JSON]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(Body):
    id: str
    object: Literal["response"]
    deleted: bool
