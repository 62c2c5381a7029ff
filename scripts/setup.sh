#!/usr/bin/env bash
# Creates .venv (if missing) and installs gptoss-serve into it with the given extras.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# On a machine without an NVIDIA driver take the CPU build of torch (a small wheel); elsewhere
# let pip pick the CUDA build that the version range in pyproject.toml admits.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "torch>=2.4,<2.15"
  else
    .venv/bin/python -m pip install -q torch==2.13.0 \
      || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# The python tool's sandbox (and its tests) need bubblewrap: install it quietly where we can
# (root with apt); where we cannot, the tool is off at start-up and its tests skip, saying why.
if [[ "$extras" == *test* ]] && ! command -v bwrap >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -qq bubblewrap || { apt-get update -qq && apt-get install -y -qq bubblewrap; }
  } >/dev/null 2>&1 || echo "setup: could not install bubblewrap; the sandbox tests will skip"
fi
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
else
  .venv/bin/python -m pip install -q -e .
fi
