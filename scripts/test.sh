#!/usr/bin/env bash
# The whole test suite: set up everything it needs (Python extras, Chromium for the browser tests), then pytest.
# Usage: scripts/test.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh server,ui,dev,ray
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
export HF_HUB_OFFLINE=1
ruff check .
ruff format --check .
exec python3 -m pytest -q "$@"
