"""One streamed OpenAI request, timed: the client side of `gptoss-serve bench`.

Owns the request bodies for `/v1/completions` and `/v1/chat/completions`, reading the SSE
stream, and the per-request timings (TTFT, inter-token gaps, latency) and token counts.
Knows nothing of workloads' construction, load shaping or statistics.

Token counting: the output token count is the server's `usage.completion_tokens` when the server
sends usage (we ask with `stream_options.include_usage`); otherwise it is the number of chunks
that carried text (content, reasoning or tool-call deltas), which equals the token count when the
server streams one token per chunk and undercounts when it groups tokens.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from gptoss_serve.bench.workloads import BenchRequest

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"


@dataclass(frozen=True)
class RequestSettings:
    """What every request of a run shares."""

    model: str
    endpoint: str = COMPLETIONS_ENDPOINT
    ignore_eos: bool = False
    temperature: float = 0.0
    token_prompts: bool = True  # /v1/completions: send prompt token ids instead of text
    include_usage: bool = True
    extra_body: dict = field(default_factory=dict)


@dataclass
class RequestResult:
    """The outcome of one request. Times are seconds; `itl` holds gaps between text chunks."""

    success: bool = False
    error: str = ""
    prompt_len: int = 0  # the workload's length, replaced by usage.prompt_tokens when reported
    expected_output_len: int = 0
    output_tokens: int = 0
    usage_reported: bool = False
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    text: str = ""


def build_body(req: BenchRequest, s: RequestSettings) -> dict:
    """The JSON body for one streamed request."""
    body: dict = {"model": s.model, "max_tokens": req.output_len, "temperature": s.temperature,
                  "stream": True}
    if s.include_usage:
        body["stream_options"] = {"include_usage": True}
    if s.ignore_eos:
        body["ignore_eos"] = True
    if s.endpoint.rstrip("/").endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": req.prompt}]
    elif s.token_prompts and req.prompt_ids is not None:
        body["prompt"] = list(req.prompt_ids)
    else:
        body["prompt"] = req.prompt
    body.update(s.extra_body)
    return body


def chunk_text(chunk: dict) -> str:
    """The text one SSE chunk adds (completion text, or chat content/reasoning/tool calls)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    parts = [delta.get(k) or "" for k in ("content", "reasoning_content", "reasoning")]
    for call in delta.get("tool_calls") or []:
        fn = call.get("function") or {}
        parts.append((fn.get("name") or "") + (fn.get("arguments") or ""))
    return "".join(parts)


def _sse_payloads(line: str) -> str | None:
    line = line.strip()
    if not line.startswith("data:"):
        return None
    return line[len("data:"):].strip()


class _StreamState:
    """Accumulates one stream's chunks into a RequestResult."""

    def __init__(self, result: RequestResult, start: float):
        self.result = result
        self.start = start
        self.last = start
        self.chunks = 0
        self.texts: list[str] = []

    def on_chunk(self, chunk: dict, now: float) -> None:
        if "error" in chunk:
            raise RuntimeError(f"server error in stream: {chunk['error']}")
        usage = chunk.get("usage")
        if usage and usage.get("completion_tokens") is not None:
            self.result.output_tokens = int(usage["completion_tokens"])
            self.result.usage_reported = True
            if usage.get("prompt_tokens") is not None:
                self.result.prompt_len = int(usage["prompt_tokens"])
        text = chunk_text(chunk)
        if not text:
            return
        if self.chunks == 0:
            self.result.ttft = now - self.start
        else:
            self.result.itl.append(now - self.last)
        self.chunks += 1
        self.last = now
        self.texts.append(text)

    def finish(self, now: float) -> RequestResult:
        r = self.result
        r.latency = now - self.start
        r.text = "".join(self.texts)
        if not r.usage_reported:
            r.output_tokens = self.chunks
        r.success = self.chunks > 0 or r.output_tokens > 0
        if not r.success:
            r.error = "the stream carried no output"
        return r


async def send_request(
    client: httpx.AsyncClient, req: BenchRequest, settings: RequestSettings
) -> RequestResult:
    """Send one streamed request and time it; failures are returned, never raised."""
    result = RequestResult(prompt_len=req.prompt_len, expected_output_len=req.output_len)
    start = time.perf_counter()
    state = _StreamState(result, start)
    try:
        async with client.stream("POST", settings.endpoint, json=build_body(req, settings)) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                result.error = f"HTTP {resp.status_code}: {body[:500]}"
                return result
            async for line in resp.aiter_lines():
                data = _sse_payloads(line)
                if data is None or data == "":
                    continue
                if data == "[DONE]":
                    break
                state.on_chunk(json.loads(data), time.perf_counter())
    except (httpx.HTTPError, json.JSONDecodeError, RuntimeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.latency = time.perf_counter() - start
        return result
    return state.finish(time.perf_counter())
