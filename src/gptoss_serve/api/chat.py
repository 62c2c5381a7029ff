"""POST /v1/chat/completions: validate -> render (harmony) -> generate -> map -> respond.

Owns the chat request's way through the server and the OpenAI response and chunk shapes. The
per-choice mapping (reasoning, content, tool calls, stop strings) is `api/choice.py`; framing is
`api/sse.py`. Knows nothing of torch, blocks or kernels: the engine is reached through
`ApiContext.generate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gptoss_serve.api.bodies import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionResponse,
    ChoiceLogprobs,
    CompletionTokensDetails,
    DeltaMessage,
    PromptTokensDetails,
    Usage,
)
from gptoss_serve.api.chat_tools import builtin_types, create_chat_with_tools
from gptoss_serve.api.choice import ChoiceState
from gptoss_serve.api.context import ApiContext, new_id, off_loop, sampling_params
from gptoss_serve.api.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    NamedToolChoice,
    parse_body,
)
from gptoss_serve.api.streaming import prime, respond
from gptoss_serve.constrain import ConstraintSpec, build_constraint, check_tools
from gptoss_serve.engine.request import EngineRequest, StepOutput
from gptoss_serve.harmony.render import (
    RenderedPrompt,
    RenderOptions,
    declared_function_names,
    render_chat,
)


def chat_constraint(ctx: ApiContext, req: ChatCompletionRequest,
                    tools: list[dict[str, Any]]) -> ConstraintSpec | None:
    """The request's constrained decoding (response_format, structured_outputs, tool_choice,
    reasoning budget); 400s for bad schemas and unknown tool names come from here."""
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice):
        choice = choice.model_dump()
    budget = req.max_reasoning_tokens
    if budget is None:
        budget = ctx.config.default_max_reasoning_tokens
    return build_constraint(
        response_format=req.response_format_dict(), structured_outputs=req.structured_outputs,
        tools=tools, tool_choice=choice, parallel_tool_calls=req.parallel_tool_calls,
        max_reasoning_tokens=budget)


def offered_tools(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The function tools the model is told about (none when tool_choice is 'none')."""
    if req.tool_choice == "none" or not req.tools:
        return []
    return [t.model_dump(exclude_none=True) for t in req.tools if t.type == "function"]


def render_messages(
    ctx: ApiContext, messages: list[ChatMessage], effort: str, tools: list[dict[str, Any]],
    response_format: dict[str, Any] | None = None,
) -> RenderedPrompt:
    """The harmony prompt of a conversation (chat completions and /tokenize)."""
    options = RenderOptions(
        reasoning_effort=effort, current_date=ctx.current_date(), tools=tools or None,
        response_format=response_format,
    )
    return render_chat([m.model_dump(exclude_none=True) for m in messages], options)


async def create_chat_completion(ctx: ApiContext, request: Request) -> Response:
    req = await off_loop(parse_body, ChatCompletionRequest, await request.body())
    if builtin_types(req):  # extension: the server runs python / browser (api/chat_tools.py)
        service = request.app.state.responses
        return await create_chat_with_tools(ctx, request, req, service.tools,
                                            service.max_tool_turns)
    ctx.check_model(req.model)
    tools = offered_tools(req)
    if req.tool_choice == "none":  # tools left out of the prompt are still checked
        check_tools([t.model_dump(exclude_none=True) for t in req.tools or []])
    # schema checks and grammar compilation (first time: the vocabulary, ~1 s) off the event loop
    constraint = await off_loop(chat_constraint, ctx, req, tools)
    prompt = await off_loop(render_messages, ctx, req.messages, req.reasoning_effort, tools,
                            req.response_format_dict())
    n_prompt = len(prompt.token_ids)
    cap_param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    max_tokens = ctx.max_tokens_for(
        n_prompt, req.requested_max_tokens(), ctx.config.default_max_tokens,
        requested_param=cap_param,
    )
    params = sampling_params(
        req,
        max_tokens=max_tokens,
        stop_token_ids=tuple(prompt.stop_token_ids),
        logprobs=req.engine_logprobs(),
        vocab_size=ctx.tokenizer.vocab_size,
    )
    if constraint is not None:
        params = dataclasses.replace(params, constraint=constraint)
    engine_req = EngineRequest(new_id("chatcmpl"), tuple(prompt.token_ids), params)
    run = ChatRun(ctx, req, engine_req, declared_function_names(tools))
    return await respond(request, prime(ctx.generate(engine_req)), run, req.stream)


class ChatRun:
    """One chat request in flight: its choices and the response or chunk shapes."""

    def __init__(self, ctx: ApiContext, req: ChatCompletionRequest, engine_req: EngineRequest,
                 names: list[str]):
        self.id = engine_req.request_id
        self.created = int(time.time())
        self.model = req.model
        self.req = req
        self.num_prompt_tokens = len(engine_req.prompt_token_ids)
        self.num_cached_tokens = 0
        self.choices = [
            ChoiceState(
                i,
                ctx.tokenizer,
                declared_tools=names,
                stops=req.stop_strings(),
                reasoning_alias=ctx.config.reasoning_content_alias,
                want_logprobs=req.logprobs,
            )
            for i in range(req.n)
        ]

    async def _steps(
        self, outputs: AsyncGenerator[StepOutput, None]
    ) -> AsyncIterator[tuple[ChoiceState, list[dict[str, Any]]]]:
        """(choice, its new deltas) per engine output until every choice is done. Closes
        `outputs` however it ends (which aborts the engine request if choices ended early)."""
        async with contextlib.aclosing(outputs):
            async for out in outputs:
                self.num_cached_tokens = max(self.num_cached_tokens, out.num_cached_tokens)
                state = self.choices[out.index]
                if not state.done:
                    yield state, state.consume(out)
                if all(c.done for c in self.choices):
                    break
        for state in self.choices:  # the engine ended without a finish (should not happen)
            if not state.done:
                yield state, state.finish(None)

    # ---- non-streaming -----------------------------------------------------------------------
    async def collect(self, outputs: AsyncGenerator[StepOutput, None]) -> dict[str, Any]:
        async with contextlib.aclosing(self._steps(outputs)) as steps:
            async for _ in steps:
                pass
        return ChatCompletionResponse(
            id=self.id, object="chat.completion", created=self.created, model=self.model,
            choices=[self._choice(c) for c in self.choices], usage=self.usage()).body()

    def _choice(self, c: ChoiceState) -> ChatCompletionChoice:
        logprobs = ChoiceLogprobs(content=c.logprobs) if self.req.logprobs else None
        return ChatCompletionChoice(index=c.index, message=c.message(), logprobs=logprobs,
                                    finish_reason=c.finish_reason)

    def usage(self) -> Usage:
        completion = sum(c.completion_tokens for c in self.choices)
        reasoning = sum(c.reasoning_tokens for c in self.choices)
        return Usage(prompt_tokens=self.num_prompt_tokens, completion_tokens=completion,
                     total_tokens=self.num_prompt_tokens + completion,
                     prompt_tokens_details=PromptTokensDetails(
                         cached_tokens=self.num_cached_tokens),
                     completion_tokens_details=CompletionTokensDetails(
                         reasoning_tokens=reasoning))

    # ---- streaming ---------------------------------------------------------------------------
    async def chunks(self, outputs: AsyncGenerator[StepOutput, None]
                     ) -> AsyncGenerator[dict[str, Any], None]:
        async with contextlib.aclosing(outputs), contextlib.aclosing(self._steps(outputs)) as steps:
            for c in self.choices:
                yield self._chunk(c.index, {"role": "assistant", "content": ""})
            async for state, deltas in steps:
                for delta in deltas:
                    yield self._chunk(state.index, delta, state.take_logprobs())
                if state.done:
                    yield self._chunk(state.index, {}, state.take_logprobs(), state.finish_reason)
        if self.req.include_usage():
            yield self._chunk_of([], usage=self.usage())

    def _chunk_of(self, choices: list[ChatCompletionChunkChoice], **usage: Usage | None
                  ) -> dict[str, Any]:
        """The chunk's body; `usage` given (None but on the last) only when asked for."""
        return ChatCompletionChunk(id=self.id, object="chat.completion.chunk",
                                   created=self.created, model=self.model, choices=choices,
                                   **usage).body()

    def _chunk(self, index: int, delta: dict[str, Any],
               logprobs: list[dict[str, Any]] | None = None, finish_reason: str | None = None
               ) -> dict[str, Any]:
        lp = ChoiceLogprobs(content=logprobs) if logprobs is not None else None
        choice = ChatCompletionChunkChoice(index=index, delta=DeltaMessage.model_validate(delta),
                                           logprobs=lp, finish_reason=finish_reason)
        return self._chunk_of([choice], **({"usage": None} if self.req.include_usage() else {}))
