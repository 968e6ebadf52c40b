#!/usr/bin/env bash
# The main job: set up if needed (scripts/setup.sh), then generate with the embedded model, offline, on the CPU.
# Usage: scripts/main.sh "PROMPT" [more `sdplay generate` options]
set -euo pipefail
cd "$(dirname "$0")/.."
py="$(scripts/setup.sh)"
export HF_HUB_OFFLINE=1
exec "$(dirname "$py")/sdplay" generate "${@:-red heart}" --device cpu
