#!/usr/bin/env bash
# Installs gptoss-serve into .venv (once) and starts the server. With no --model it serves the built-in
# tiny random checkpoint (no network needed). Arguments go to `gptoss-serve serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
# install on first use only (setup.sh reinstalls the package; scripts/setup.sh to update)
[ -x .venv/bin/gptoss-serve ] || scripts/setup.sh
exec .venv/bin/gptoss-serve serve "$@"
