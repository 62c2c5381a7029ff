#!/usr/bin/env bash
# Installs gptoss-serve into .venv and starts the server. With no --model it serves the built-in
# tiny random checkpoint (no network needed). Arguments go to `gptoss-serve serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/gptoss-serve serve "$@"
