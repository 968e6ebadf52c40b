#!/usr/bin/env bash
# The main job: set up if needed, then generate with the embedded model, offline, on the CPU.
# Usage: scripts/main.sh "PROMPT" [more `sdplay generate` options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
export HF_HUB_OFFLINE=1
exec sdplay generate "${@:-red heart}" --device cpu
