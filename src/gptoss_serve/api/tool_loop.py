"""The server-run loop of one Responses run: model -> built-in tool -> model, streamed.

Owns the order of a run: (1) render the conversation (history + this input + what the run has
produced so far) and start a model call; the first call's admission errors (context too long,
queue full, engine dead) reach the client as HTTP errors because nothing was emitted yet;
(2) emit `response.created` / `response.in_progress` once (a background run announces
itself `queued` at once: `response.created`, `response.queued`); (3) map the call's tokens to items
(`api/response_output.py`); (4) if the model addressed an enabled built-in tool and turns are
left (`--max-tool-turns`), run it, emit its call events, append its reply as a harmony tool
message and go to (1); once the turns are spent the call is left unrun, its item `incomplete`
(as OpenAI ignores calls past `max_tool_calls`); a function call, a final answer or a cut ends
the run; (5) set status and usage, emit the terminal event.
Cancelling the task (client gone, `POST .../cancel`) aborts the engine request or the tool call
in flight; the run then ends `cancelled`. Knows nothing of HTTP or SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from gptoss_serve.api.context import ApiContext, new_id, off_loop
from gptoss_serve.api.response_input import render_conversation, tool_reply
from gptoss_serve.api.response_output import OutputMapper, PendingCall
from gptoss_serve.api.response_run import DEFAULT_TEMPERATURE, ResponseRun
from gptoss_serve.api.streaming import prime
from gptoss_serve.engine.request import EngineRequest, SamplingParams, StepOutput
from gptoss_serve.errors import GptOssServeError
from gptoss_serve.harmony.render import RenderOptions, declared_function_names
from gptoss_serve.tools.base import BuiltinTool

log = logging.getLogger("gptoss_serve.responses")


def error_code(exc: GptOssServeError) -> str:
    """OpenAI's `response.error.code` for one of our errors (its list is closed)."""
    if exc.status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if exc.status < 500 else "server_error"


@dataclass
class LoopPlan:
    """Everything the loop needs besides the run (fixed for the whole run)."""

    instructions: str | None
    options: RenderOptions
    tools: dict[str, BuiltinTool]  # enabled built-in tools offered to this run, by tool type
    max_tool_turns: int
    constraint: Any = None  # SamplingParams.constraint (api/response_constraint.py)


class ToolLoop:
    def __init__(self, ctx: ApiContext, run: ResponseRun, plan: LoopPlan):
        self.ctx, self.run, self.plan = ctx, run, plan
        self._declared = declared_function_names(plan.options.tools)
        self._started = False

    # ---- one model call ------------------------------------------------------------------
    def engine_request(self) -> EngineRequest:
        """The next model call (raises 400s: context too long, bad options)."""
        run, ctx = self.run, self.ctx
        prompt = render_conversation(run.history + run.messages, self.plan.instructions,
                                     self.plan.options)
        budget = run.req.max_output_tokens
        if budget is not None:
            budget = max(1, budget - run.usage.output_tokens)
        n = len(prompt.token_ids)
        max_tokens = ctx.max_tokens_for(n, budget, ctx.config.default_max_tokens,
                                        requested_param="max_output_tokens",
                                        prompt_param="input")
        req = run.req
        params = SamplingParams(
            temperature=req.temperature if req.temperature is not None else DEFAULT_TEMPERATURE,
            top_p=req.top_p if req.top_p is not None else 1.0,
            seed=req.seed, max_tokens=max_tokens, stop_token_ids=tuple(prompt.stop_token_ids))
        if self.plan.constraint is not None:
            params = dataclasses.replace(params, constraint=self.plan.constraint)
        return EngineRequest(new_id("resp"), tuple(prompt.token_ids), params)

    async def start_call(self) -> Any:
        """Admit the next model call; errors raise here, before anything streams."""
        self.ctx.check_capacity()
        request = await off_loop(self.engine_request)  # rendering a long chain takes a while
        self.run.usage.input_tokens += len(request.prompt_token_ids)
        outputs = await prime(self.ctx.generate(request))
        if self.run.status != "in_progress":  # the first call: the run begins
            if not self._started:  # a foreground run is never shown as queued
                self.run.status = "in_progress"
            self.announce()
            self.run.status = "in_progress"
            self.run.emit("response.in_progress", response=self.run.snapshot())
        return outputs

    def announce(self) -> None:
        """`response.created` (and `response.queued` for a run still waiting), once."""
        if self._started:
            return
        self._started = True
        self.run.emit("response.created", response=self.run.snapshot())
        if self.run.status == "queued":
            self.run.emit("response.queued", response=self.run.snapshot())

    async def _model_call(self, outputs: Any) -> tuple[OutputMapper, str | None]:
        run = self.run
        mapper = OutputMapper(run.emit, run.output, self._declared, self.plan.tools,
                              self.ctx.tokenizer.is_special, self._annotations)
        reason: str | None = None
        try:
            async with contextlib.aclosing(outputs) as steps:
                async for out in steps:
                    self._count(out, mapper)
                    if out.finished:
                        reason = out.finish_reason
                        break
        finally:
            run.token_ids.append(mapper.token_ids)
            mapper.finish(complete=reason == "stop")
            run.messages += mapper.messages
        return mapper, reason

    def _count(self, out: StepOutput, mapper: OutputMapper) -> None:
        before = mapper.reasoning_tokens
        mapper.feed(out.new_token_ids)
        usage = self.run.usage
        usage.output_tokens += len(out.new_token_ids)
        usage.reasoning_tokens += mapper.reasoning_tokens - before
        usage.cached_tokens = max(usage.cached_tokens, out.num_cached_tokens)

    # ---- the loop ------------------------------------------------------------------------
    async def execute(self, first_outputs: Any) -> None:
        """Run to the end; always leaves the run in a terminal status with its last event."""
        run = self.run
        try:
            await self._turns(first_outputs)
        except asyncio.CancelledError:
            run.status = "cancelled"  # no event of its own in OpenAI's stream: followers end
            run.wake()
            raise
        except GptOssServeError as exc:
            self._fail(error_code(exc), exc.message)
        except Exception as exc:  # our bug: the run fails visibly, the server keeps serving
            log.exception("response %s failed", run.id)
            self._fail("server_error", f"internal error: {type(exc).__name__}")

    async def _turns(self, outputs: Any) -> None:
        for turn in range(self.plan.max_tool_turns + 1):
            mapper, reason = await self._model_call(outputs)
            if reason == "length":
                return self._complete("incomplete", "max_output_tokens")
            call = mapper.pending
            if call is None:
                return self._complete("completed")
            if turn == self.plan.max_tool_turns:  # OpenAI's max_tool_calls: the call is ignored
                self._close_call(call, {**call.item, "status": "incomplete"})
                return self._complete("completed")
            await self._run_tool(call)
            outputs = await self.start_call()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run_tool(self, call: PendingCall) -> None:
        tool = self.plan.tools[call.tool_type]
        base = {"item_id": call.item["id"], "output_index": call.output_index}
        kind = "code_interpreter_call" if call.tool_type == "code_interpreter" else \
            "web_search_call"
        self.run.emit(f"response.{kind}." + ("interpreting" if kind.startswith("code")
                                              else "searching"), **base)
        result = await tool.run(self.run.conversation_id, call.recipient, call.body)
        item = {**result.item, "id": call.item["id"]}
        self.run.emit(f"response.{kind}.completed", **base)
        self._close_call(call, item)
        self.run.messages.append(tool_reply(result.author, result.text,
                                            call.channel or "analysis"))

    def _close_call(self, call: PendingCall, item: dict[str, Any]) -> None:
        self.run.output[call.output_index] = item
        self.run.emit("response.output_item.done", output_index=call.output_index, item=item)

    def close_sessions(self) -> None:
        """Forget the tools' state of this run's conversation (nothing can continue it)."""
        for tool in self.plan.tools.values():
            tool.close_session(self.run.conversation_id)

    # ---- the end -------------------------------------------------------------------------
    def _complete(self, status: str, reason: str | None = None) -> None:
        run = self.run
        run.status, run.incomplete_reason = status, reason
        self._finish_event(f"response.{status}")

    def _annotations(self, text: str) -> list[dict[str, Any]]:
        """url_citation annotations the tools (browser) find in a message's text."""
        return [note for tool in self.plan.tools.values()
                for note in tool.annotations(self.run.conversation_id, text)]

    def _fail(self, code: str, message: str) -> None:
        self.run.status = "failed"
        self.run.error = {"code": code, "message": message}
        self._finish_event("response.failed")

    def _finish_event(self, kind: str) -> None:
        self.run.emit(kind, response=self.run.snapshot())
