"""The command line: `gptoss-serve serve | chat | bench | make-checkpoint`.

The only reader of argv and the environment. Each subcommand's section below turns its arguments
into a call of the module that owns the work; no logic lives here.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptoss_serve.tools.base import ToolOptions

from gptoss_serve.engine.request import CHAT_TEMPERATURE


# ---- make-checkpoint (owner: model/synthetic.py) -------------------------------------------------
def _add_make_checkpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-checkpoint", help="write a random gpt-oss checkpoint (HF layout)")
    p.add_argument("out_dir", help="folder to write")
    p.add_argument("--preset", default="tiny", help="tiny | small | 20b | 120b")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_make_checkpoint)


def _run_make_checkpoint(args: argparse.Namespace) -> int:
    from gptoss_serve.model.synthetic import write_checkpoint

    try:
        write_checkpoint(args.out_dir, preset=args.preset, seed=args.seed)
    except (ValueError, OSError) as exc:
        print(f"make-checkpoint: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.preset} checkpoint to {args.out_dir}")
    return 0


# ---- what serve and chat share: the model, its engine, the system-message date -----------------
def _add_model_args(a: Callable[..., object]) -> None:
    a("--model", default=None, help="checkpoint folder or hub name (default: tiny random model)")
    a("--device", default="auto", type=_device, help="auto | cpu | cuda | cuda:N")
    a("--dtype", default="auto", help="auto | bfloat16 | float16 | float32")
    a("--max-model-len", type=_positive_int, default=None,
      help="context limit (default: the model's)")
    a("--kv-cache-memory", type=_positive_float, default=None, help="KV cache budget in GiB")
    a("--kernels", default="auto", choices=["auto", "triton", "reference"],
      help="auto: Triton on CUDA (sm_80+), references elsewhere; reference: plain torch")
    a("--enforce-eager", action="store_true", help="no CUDA graphs for the decode step")
    a("--current-date", default="today", help="system-message date: YYYY-MM-DD | today | none")


# ---- serve (owner: api/) -------------------------------------------------------------------------
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the OpenAI-compatible HTTP server")
    a = p.add_argument
    _add_model_args(a)
    a("--served-model-name", default=None, help="name clients use (default: hub/folder name)")
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=8000)
    a("--api-key", default=None, help="require `Authorization: Bearer KEY` ($GPTOSS_API_KEY)")
    a("--max-num-seqs", type=_positive_int, default=256, help="sequences per engine step")
    a("--max-num-batched-tokens", type=_positive_int, default=8192, help="tokens per engine step")
    a("--threads", type=_positive_int, default=None,
      help="torch intra-op threads in the server (default: torch's, one per core); on a CPU "
      "shared with other work, fewer threads than cores avoid waiting for busy cores")
    a("--no-reasoning-content-alias", action="store_true",
      help="send reasoning only as `reasoning`, not also as `reasoning_content`")
    a("--max-queue", type=_positive_int, default=1024,
      help="requests admitted and not yet started before new ones get a 429")
    a("--max-body-mib", type=_positive_float, default=16.0, help="larger request bodies get a 413")
    a("--public-metrics", action="store_true",
      help="serve /metrics without the API key (every other route but /health needs it)")
    store = p.add_mutually_exclusive_group()
    store.add_argument(
        "--responses-db", default=None, metavar="PATH",
        help="SQLite file of stored /v1/responses (default: $GPTOSS_SERVE_CACHE/responses.sqlite3)")
    store.add_argument(
        "--no-store", action="store_true",
        help="keep no /v1/responses state (store=true is ignored; no previous_response_id chains)")
    a("--max-tool-turns", type=_positive_int, default=8,
      help="built-in tool calls (python, browser) the server runs per response")
    _add_tool_args(a)
    a("--max-reasoning-tokens", type=_natural_int, default=None,
      help="reasoning budget of chat requests that set none: after this many analysis/preamble "
      "tokens the answer is forced to start (default: no budget)")
    p.set_defaults(func=_run_serve)


# ---- built-in tools (owner: tools/) --------------------------------------------------------------
def _add_tool_args(a: Callable[..., object]) -> None:
    a("--python-tool", default="sandbox", choices=["sandbox", "off", "unsafe-local"],
      help="the python (code_interpreter) tool: sandbox (bubblewrap; off if the host cannot "
      "sandbox), off, or unsafe-local (UNSANDBOXED, as this server's user)")
    a("--python-timeout", type=float, default=120.0, help="wall seconds per python call")
    a("--python-memory-mb", type=_positive_int, default=1024, help="python kernel memory (MiB)")
    a("--browser-backend", default="local", choices=["local", "exa", "you"],
      help="browser (web_search) search backend: local (--browser-corpus, no network), exa, you")
    a("--browser-corpus", default=None,
      help="folder of .html/.md/.txt documents for the local browser backend")
    a("--browser-api-key", default=None,
      help="key of the exa/you backend (default: $EXA_API_KEY / $YDC_API_KEY)")
    a("--browser-search-url", default=None, help="base URL of the exa/you API (override)")
    a("--browser-allow-private", action="store_true",
      help="let browser.open fetch private and loopback addresses (off: SSRF guard)")


def _tool_options(args: argparse.Namespace) -> ToolOptions:
    from gptoss_serve.tools.base import ToolOptions

    env_key = {"exa": "EXA_API_KEY", "you": "YDC_API_KEY"}.get(args.browser_backend)
    try:
        return ToolOptions(
            python_tool=args.python_tool, python_timeout=args.python_timeout,
            python_memory_mb=args.python_memory_mb, browser_backend=args.browser_backend,
            browser_corpus=args.browser_corpus,
            browser_api_key=args.browser_api_key or (os.environ.get(env_key) if env_key else None),
            browser_search_url=args.browser_search_url,
            browser_allow_private=args.browser_allow_private)
    except ValueError as exc:
        raise SystemExit(f"gptoss-serve serve: {exc}") from None


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def _number(value: str) -> float:
    """A flag's float, or nan where it is none (nan is outside every range a flag accepts)."""
    try:
        return float(value)
    except ValueError:
        return float("nan")


def _positive_float(value: str) -> float:
    number = _number(value)
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def _in_range(low: float, high: float) -> Callable[[str], float]:
    """A flag's number within the chat API's bounds for the same field (`api/schemas.py`)."""

    def parse(value: str) -> float:
        number = _number(value)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, "
                                             f"got {value!r}")
        return number

    return parse


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def _natural_int(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return int(value)


def _current_date(value: str) -> str | None:
    import datetime as dt

    if value.lower() in ("none", ""):
        return None
    if value == "today":
        return value
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise SystemExit(
            f"--current-date: expected YYYY-MM-DD, today or none, got {value!r}"
        ) from None


def _run_serve(args: argparse.Namespace) -> int:
    import logging

    from gptoss_serve.api.server import ServeOptions, run_server
    from gptoss_serve.config import CacheConfig, SchedulerConfig, ServerConfig

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)
    tiny = _tiny_dir()  # the built-in random checkpoint
    server = ServerConfig(
        host=args.host, port=args.port,
        api_key=args.api_key or os.environ.get("GPTOSS_API_KEY") or None,
        current_date=_current_date(args.current_date),
        reasoning_content_alias=not args.no_reasoning_content_alias, max_queue=args.max_queue,
        responses_db=None if args.no_store else (
            args.responses_db or str(tiny.parent / "responses.sqlite3")),
        max_tool_turns=args.max_tool_turns,
        max_body_bytes=int(args.max_body_mib * (1 << 20)), public_metrics=args.public_metrics,
        default_max_reasoning_tokens=args.max_reasoning_tokens,
    )
    return run_server(ServeOptions(
        model=args.model, served_model_name=args.served_model_name, dtype=args.dtype,
        device=args.device, server=server, tiny_dir=tiny, kernels=args.kernels,
        enforce_eager=args.enforce_eager, threads=args.threads, tools=_tool_options(args),
        cache=CacheConfig(kv_cache_memory_gib=args.kv_cache_memory),
        sched=SchedulerConfig(max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                              max_num_batched_tokens=args.max_num_batched_tokens),
    ))


# ---- chat (owner: chat_repl.py) ------------------------------------------------------------------
def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="talk to a checkpoint in the terminal (no HTTP)")
    a = p.add_argument
    _add_model_args(a)
    a("--system", default=None, help="an instruction for the whole conversation")
    a("--reasoning-effort", default="medium", choices=["low", "medium", "high"])
    a("--max-tokens", type=_positive_int, default=1024, help="per answer (cut to the context)")
    a("--temperature", type=_in_range(0.0, 2.0), default=CHAT_TEMPERATURE, help="0 to 2")
    a("--top-p", type=_in_range(0.0, 1.0), default=1.0, help="0 to 1")
    a("--seed", type=int, default=None)
    a("--show-reasoning", action="store_true", help="print the chain of thought, marked")
    p.set_defaults(func=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    from gptoss_serve.chat_repl import ChatOptions, run_chat
    from gptoss_serve.config import CacheConfig, SchedulerConfig
    from gptoss_serve.engine.engine import LLMEngine
    from gptoss_serve.model.synthetic import tiny_checkpoint

    model = args.model or str(tiny_checkpoint(_tiny_dir()))
    if args.model is None:
        print(f"no --model given: a tiny RANDOM checkpoint ({model}); its answers are noise")
    engine = LLMEngine.from_config(
        model, dtype=args.dtype, device=args.device, kernels=args.kernels,
        cuda_graphs=not args.enforce_eager,
        cache=CacheConfig(kv_cache_memory_gib=args.kv_cache_memory),
        sched=SchedulerConfig(max_num_seqs=1, max_model_len=args.max_model_len))
    options = ChatOptions(
        system=args.system, reasoning_effort=args.reasoning_effort, max_tokens=args.max_tokens,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        show_reasoning=args.show_reasoning, current_date=_current_date(args.current_date))
    print("type a message; /reset forgets the conversation, /exit (or Ctrl-D) leaves")
    return run_chat(engine, options, _read_line, sys.stdout)


def _tiny_dir() -> Path:
    """Where the built-in tiny random checkpoint lives ($GPTOSS_SERVE_CACHE/tiny)."""
    cache_root = os.environ.get("GPTOSS_SERVE_CACHE") or Path.home() / ".cache" / "gptoss-serve"
    return Path(cache_root) / "tiny"


def _read_line() -> str | None:
    try:
        return input("> " if sys.stdin.isatty() else "")
    except EOFError:
        return None


# ---- bench (owner: bench/) -----------------------------------------------------------------------
def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="load-test an OpenAI-compatible server")
    a = p.add_argument
    a("--base-url", default="http://127.0.0.1:8000", help="server root (without /v1)")
    a("--endpoint", default="/v1/completions", help="/v1/completions or /v1/chat/completions")
    a("--model", default=None, help="model name (default: the first of /v1/models)")
    a("--api-key", default=None, help="bearer token (default: $OPENAI_API_KEY)")
    a("--dataset-name", default="random", choices=["random", "sharegpt"])
    a("--dataset-path", default=None, help="ShareGPT-style JSON file")
    a("--num-prompts", type=int, default=100)
    a("--random-input-len", type=int, default=1024)
    a("--random-output-len", type=int, default=128)
    a("--random-range-ratio", type=float, default=0.0, help="lengths uniform in len*(1 +- r)")
    a("--sharegpt-output-len", type=int, default=None, help="fix every output length")
    a("--seed", type=int, default=0)
    a("--request-rate", type=float, default=float("inf"), help="Poisson req/s; inf = all at once")
    a("--max-concurrency", type=int, default=None)
    a("--num-warmups", type=int, default=0)
    a("--ignore-eos", action="store_true", help="send ignore_eos (vLLM and gptoss-serve accept)")
    a("--temperature", type=float, default=0.0)
    a("--text-prompts", action="store_true", help="/v1/completions: send text, not token ids")
    a("--no-usage", action="store_true", help="do not ask for usage; count text chunks instead")
    a("--extra-body", default=None, help="JSON object merged into every request body")
    a("--result-json", default=None, help="write the full result here")
    a("--disable-tqdm", action="store_true")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import json
    import os

    from gptoss_serve.bench.main import BenchOptions, run_bench
    from gptoss_serve.errors import GptOssServeError

    options = BenchOptions(
        base_url=args.base_url, endpoint=args.endpoint, model=args.model,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
        dataset_name=args.dataset_name, dataset_path=args.dataset_path,
        num_prompts=args.num_prompts, random_input_len=args.random_input_len,
        random_output_len=args.random_output_len, random_range_ratio=args.random_range_ratio,
        sharegpt_output_len=args.sharegpt_output_len, seed=args.seed,
        request_rate=args.request_rate, max_concurrency=args.max_concurrency,
        num_warmups=args.num_warmups, ignore_eos=args.ignore_eos, temperature=args.temperature,
        token_prompts=not args.text_prompts, include_usage=not args.no_usage,
        extra_body=json.loads(args.extra_body or "{}"),
        result_json=args.result_json, show_progress=not args.disable_tqdm,
    )
    try:
        data = run_bench(options)
    except GptOssServeError as exc:
        print(f"bench: {exc.message}", file=sys.stderr)
        return 2
    return 1 if data["metrics"]["completed"] == 0 else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptoss-serve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_chat(sub)
    _add_bench(sub)
    _add_make_checkpoint(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gptoss_serve.errors import GptOssServeError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GptOssServeError as exc:  # a start-up problem (checkpoint, device, memory): no traceback
        print(f"gptoss-serve {args.command}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
