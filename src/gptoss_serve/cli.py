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
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    raise SystemExit("bench: not built yet")


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
