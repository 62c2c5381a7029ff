#!/usr/bin/env bash
# Installs gptoss-serve with its test extras into .venv, checks style, and runs the whole suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/harmony -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
