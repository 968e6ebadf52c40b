#!/usr/bin/env bash
# The whole test suite: set up everything it needs (scripts/setup.sh with the test extras, Chromium for the
# browser tests), then lint and pytest in the project virtualenv.
# Usage: scripts/test.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
py="$(scripts/setup.sh server,ui,dev,ray)"
bin="$(dirname "$py")"
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium for the browser tests ..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 VIRTUAL_ENV="$(cd "$bin/.." && pwd)" PATH="$bin:$PATH"  # as if activated
"$bin/ruff" check .
"$bin/ruff" format --check .
exec "$py" -m pytest -q "$@"
