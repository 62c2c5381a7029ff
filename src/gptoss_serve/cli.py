"""The command line: `gptoss-serve serve | chat | bench | make-checkpoint`.

The only reader of argv and the environment. Each subcommand's section below turns its arguments
into a call of the module that owns the work; no logic lives here.
"""

from __future__ import annotations

import argparse
import sys


# ---- make-checkpoint (owner: model/synthetic.py) -------------------------------------------------
def _add_make_checkpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-checkpoint", help="write a random gpt-oss checkpoint (HF layout)")
    p.add_argument("out_dir", help="folder to write")
    p.add_argument("--preset", default="tiny", help="tiny | small | 20b | 120b")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_make_checkpoint)


def _run_make_checkpoint(args: argparse.Namespace) -> int:
    from gptoss_serve.model.synthetic import write_checkpoint

    write_checkpoint(args.out_dir, preset=args.preset, seed=args.seed)
    print(f"wrote {args.preset} checkpoint to {args.out_dir}")
    return 0


# ---- serve (owner: api/) -------------------------------------------------------------------------
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the OpenAI-compatible HTTP server")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    raise SystemExit("serve: not built yet")


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
    _add_bench(sub)
    _add_make_checkpoint(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
