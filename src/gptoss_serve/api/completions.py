"""POST /v1/completions: raw text in, raw text out (no harmony), OpenAI's legacy shapes.

Owns prompt forms (a string, strings, token ids, lists of token ids), `echo`, legacy `logprobs`,
stop strings over the decoded text and the completion response and chunk shapes. Special tokens
end or are left out of the text; they never appear in it. Knows nothing of torch or the engine's
insides.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gptoss_serve.api.bodies import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionResponse,
    Usage,
)
from gptoss_serve.api.context import (
    ApiContext,
    check_token_ids,
    new_id,
    off_loop,
    sampling_params,
)
from gptoss_serve.api.schemas import CompletionRequest, parse_body
from gptoss_serve.api.stop_strings import StopStringMatcher
from gptoss_serve.api.streaming import merge, prime, respond
from gptoss_serve.constrain import build_text_constraint
from gptoss_serve.engine.request import EngineRequest, StepOutput, TokenLogprob
from gptoss_serve.errors import InvalidRequestError


def prompt_ids(req: CompletionRequest, tokenizer: Any) -> list[list[int]]:
    """Every prompt of the request as token ids."""
    p = req.prompt
    if isinstance(p, str):
        prompts = [tokenizer.encode(p)]
    elif all(isinstance(x, str) for x in p):
        prompts = [tokenizer.encode(x) for x in p]
    elif all(isinstance(x, int) for x in p):
        prompts = [list(p)]
    else:
        prompts = [list(x) for x in p]
    for ids in prompts:
        check_token_ids(ids, tokenizer.vocab_size, "prompt")
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
    return prompts


def check_supported(req: CompletionRequest) -> None:
    if req.suffix:
        raise InvalidRequestError("suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidRequestError("best_of other than n is not supported", param="best_of")
    if req.echo and req.logprobs is not None:
        raise InvalidRequestError(
            "echo with logprobs needs prompt logprobs, which this server does not compute",
            param="echo",
        )


class TextChoice:
    """One completion choice: decoded text, stop strings, legacy logprobs."""

    def __init__(self, index: int, tokenizer: Any, stops: tuple[str, ...], prefix: str = ""):
        self.index = index
        self._tok = tokenizer
        self._decoder = tokenizer.incremental_decoder()
        self._stops = StopStringMatcher(stops)
        self.text = prefix
        self.logprobs: dict[str, list[Any]] = {
            "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []
        }
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def consume(self, out: StepOutput) -> str:
        """New tokens -> text that is safe to show now."""
        pieces: list[str] = []
        lps = out.logprobs or ()
        for i, token_id in enumerate(out.new_token_ids):
            if self.finish_reason is not None:
                break
            self.completion_tokens += 1
            if not self._tok.is_special(token_id):
                if i < len(lps):
                    self._add_logprob(lps[i])
                pieces.append(self._emit(self._stops.feed(self._decoder.feed(token_id))))
            if self._stops.matched is not None:
                self.finish_reason = "stop"
        if out.finished and self.finish_reason is None:
            pieces.append(self._emit(self._stops.feed(self._decoder.flush())))
            pieces.append(self._emit(self._stops.flush()))
            self.finish_reason = "stop" if self._stops.matched else (out.finish_reason or "stop")
        return "".join(pieces)

    def _emit(self, text: str) -> str:
        self.text += text
        return text

    def _add_logprob(self, lp: TokenLogprob) -> None:
        lpd = self.logprobs
        offsets, tokens = lpd["text_offset"], lpd["tokens"]
        offsets.append(offsets[-1] + len(tokens[-1]) if tokens else 0)
        lpd["tokens"].append(self._tok.decode([lp.token_id]))
        lpd["token_logprobs"].append(lp.logprob)
        lpd["top_logprobs"].append({self._tok.decode([t]): v for t, v in lp.top})


async def create_completion(ctx: ApiContext, request: Request) -> Response:
    req = await off_loop(parse_body, CompletionRequest, await request.body())
    ctx.check_model(req.model)
    check_supported(req)
    prompts = await off_loop(prompt_ids, req, ctx.tokenizer)
    stop_ids = tuple(ctx.engine.model_config.eos_token_ids)
    constraint = await asyncio.to_thread(
        build_text_constraint, response_format=req.response_format_dict(),
        structured_outputs=req.structured_outputs)
    engine_reqs = []
    sent = req.max_tokens if "max_tokens" in req.model_fields_set else None
    for ids in prompts:  # like chat's, the default (16) is lowered to what fits
        max_tokens = ctx.max_tokens_for(len(ids), sent, req.max_tokens, prompt_param="prompt")
        params = sampling_params(
            req, max_tokens=max_tokens, stop_token_ids=stop_ids, logprobs=req.logprobs,
            vocab_size=ctx.tokenizer.vocab_size,
        )
        if constraint is not None:
            params = dataclasses.replace(params, constraint=constraint)
        engine_reqs.append(EngineRequest(new_id("cmpl"), tuple(ids), params))
    run = CompletionRun(ctx, req, engine_reqs)
    return await respond(request, _start_all(ctx, engine_reqs), run, req.stream)


async def _start_all(
    ctx: ApiContext, engine_reqs: list[EngineRequest]
) -> AsyncGenerator[tuple[int, StepOutput], None]:
    """Start every prompt's generation (admission errors raise here) and merge their outputs."""
    streams: list[AsyncGenerator[tuple[int, StepOutput], None]] = []
    try:
        for i, r in enumerate(engine_reqs):
            streams.append(await prime(_tagged(i, ctx.generate(r))))
    except BaseException:
        for s in streams:
            await s.aclose()
        raise
    return merge(streams)


async def _tagged(
    prompt_index: int, outs: AsyncGenerator[StepOutput, None]
) -> AsyncGenerator[tuple[int, StepOutput], None]:
    try:
        async for out in outs:
            yield prompt_index, out
    finally:
        await outs.aclose()


class CompletionRun:
    """One completions request in flight (one engine request per prompt)."""

    def __init__(self, ctx: ApiContext, req: CompletionRequest, engine_reqs: list[EngineRequest]):
        self.ctx = ctx
        self.req = req
        self.engine_reqs = engine_reqs
        self.id = new_id("cmpl")
        self.created = int(time.time())
        stops = req.stop_strings()
        self.choices = [
            TextChoice(p * req.n + j, ctx.tokenizer, stops, self._echo(r))
            for p, r in enumerate(engine_reqs)
            for j in range(req.n)
        ]

    def _echo(self, r: EngineRequest) -> str:
        return self.ctx.tokenizer.decode(r.prompt_token_ids) if self.req.echo else ""

    async def _steps(
        self, outputs: AsyncGenerator[tuple[int, StepOutput], None]
    ) -> AsyncIterator[tuple[TextChoice, str]]:
        """(choice, its new text) per engine output until every choice is done. Closes
        `outputs` however it ends (which aborts engine requests not finished)."""
        async with contextlib.aclosing(outputs):
            async for p, out in outputs:
                choice = self.choices[p * self.req.n + out.index]
                if choice.finish_reason is None:
                    yield choice, choice.consume(out)
                if all(c.finish_reason is not None for c in self.choices):
                    break

    async def collect(self, outputs: AsyncGenerator[tuple[int, StepOutput], None]) -> dict:
        async with contextlib.aclosing(self._steps(outputs)) as steps:
            async for _ in steps:
                pass
        choices = [self._choice(c, c.text, c.logprobs, c.finish_reason) for c in self.choices]
        return CompletionResponse(id=self.id, object="text_completion", created=self.created,
                                  model=self.req.model, choices=choices,
                                  usage=self.usage()).body()

    async def chunks(self, outputs: AsyncGenerator[tuple[int, StepOutput], None]
                     ) -> AsyncGenerator[dict[str, Any], None]:
        sent = {c.index: 0 for c in self.choices}
        async with contextlib.aclosing(outputs), contextlib.aclosing(self._steps(outputs)) as steps:
            for c in self.choices:
                if c.text:  # echo
                    yield self._chunk(c, c.text, sent)
            async for c, text in steps:
                yield self._chunk(c, text, sent)
        if self.req.include_usage():
            yield self._chunk_of([], usage=self.usage())

    def _chunk(self, c: TextChoice, text: str, sent: dict[int, int]) -> dict[str, Any]:
        """A chunk with new text and the logprobs not sent yet."""
        lp = None
        if self.req.logprobs is not None:
            start, sent[c.index] = sent[c.index], len(c.logprobs["tokens"])
            lp = {k: v[start:] for k, v in c.logprobs.items()}
        usage = {"usage": None} if self.req.include_usage() else {}
        return self._chunk_of([self._choice(c, text, lp, c.finish_reason)], **usage)

    def _chunk_of(self, choices: list[CompletionChoice], **usage: Usage | None
                  ) -> dict[str, Any]:
        """The chunk's body; `usage` given (None but on the last) only when asked for."""
        return CompletionChunk(id=self.id, object="text_completion", created=self.created,
                               model=self.req.model, choices=choices, **usage).body()

    def _choice(self, c: TextChoice, text: str, lp: dict[str, list[Any]] | None,
                reason: str | None) -> CompletionChoice:
        logprobs = CompletionLogprobs(**lp) if lp is not None and self.req.logprobs is not None \
            else None
        return CompletionChoice(index=c.index, text=text, logprobs=logprobs, finish_reason=reason)

    def usage(self) -> Usage:
        prompt = sum(len(r.prompt_token_ids) for r in self.engine_reqs)
        completion = sum(c.completion_tokens for c in self.choices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion,
                     total_tokens=prompt + completion)
