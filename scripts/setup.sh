#!/usr/bin/env bash
# Idempotent set-up: a project virtualenv (./.venv) unless one is active, the PyTorch build for this machine,
# then sdplay in editable mode with the extras asked for. The system Python is never installed into.
# Prints the set-up Python's path on stdout; every message goes to stderr.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh server,ui,dev
# Environment:
#   PYTHON         the interpreter to build the virtualenv from (default: python3; 3.11 or newer)
#   SDPLAY_VENV    where the virtualenv goes (default: ./.venv); an active virtualenv ($VIRTUAL_ENV) is used as is
#   SDPLAY_TORCH   auto (default), cpu, cuda, or your own pip arguments for torch (scripts/install_torch.py)
#   SDPLAY_SETUP_NO_DEPS=1   install sdplay alone, without PyTorch or any dependency (checks the set-up itself)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  venv="$VIRTUAL_ENV"
else
  venv="${SDPLAY_VENV:-.venv}"
fi
py="$venv/bin/python"
stamp="$venv/.sdplay-setup${extras:+-${extras//,/-}}"

# Nothing changed since the last set-up: say nothing, start nothing.
if [ -x "$py" ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  echo "$py"
  exit 0
fi

# 1. The virtualenv.
if [ ! -x "$py" ]; then
  base="${PYTHON:-python3}"
  command -v "$base" >/dev/null 2>&1 || die "no $base on PATH; install Python 3.11 or newer (or set PYTHON=/path/to/python3)."
  version="$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$base is Python $version; sdplay needs 3.11 or newer (set PYTHON=/path/to/python3.11)."
  if ! "$base" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian and Ubuntu ship venv's pip bootstrap separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing Debian's python$version-venv (Python's venv module needs it) ..."
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$version-venv" >/dev/null) \
        || die "could not install python$version-venv; install it (apt install python$version-venv) and re-run."
    else
      die "$base cannot create virtualenvs here: install python$version-venv (sudo apt install python$version-venv), or activate a virtualenv of your own, then re-run."
    fi
  fi
  if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
    die "$venv exists and is not a virtualenv; move it away or set SDPLAY_VENV to another folder."
  fi
  say "creating the virtualenv $venv (Python $version from $(command -v "$base")) ..."
  "$base" -m venv "$venv" || die "could not create the virtualenv $venv with $base."
fi
pip=("$py" -m pip install --disable-pip-version-check)

if [ "${SDPLAY_SETUP_NO_DEPS:-0}" = 1 ]; then
  say "installing sdplay alone (SDPLAY_SETUP_NO_DEPS=1: no PyTorch, no dependencies) ..."
  "${pip[@]}" -q --no-deps -e . >&2
else
  # 2. PyTorch first, chosen on purpose: left to pip, Linux would get the 2.7 GB CUDA build on any machine.
  "$py" scripts/install_torch.py >&2
  # 3. sdplay and its libraries (diffusers, transformers, ...), with pip's progress for what it downloads.
  say "installing sdplay${extras:+ with the extras $extras} and its libraries into $venv ..."
  "${pip[@]}" -e ".${extras:+[$extras]}" >&2
fi
touch "$stamp"
say "done: $venv is ready (activate it with: source $venv/bin/activate)"
echo "$py"
