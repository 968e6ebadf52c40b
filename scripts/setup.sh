#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: the CPU build of PyTorch, then sdplay with the extras asked for.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh server,ui,dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
stamp=".setup-done${extras:+-${extras//,/-}}"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
PIP="python3 -m pip install -q --disable-pip-version-check"
# PyTorch pinned first: an unpinned torch would pull several GB of CUDA wheels.
python3 -c "import torch" 2>/dev/null || $PIP "torch==2.13.0"
$PIP -e ".${extras:+[$extras]}"
touch "$stamp"
