#!/usr/bin/env bash
# Create .venv and install fm-agent with what it needs (idempotent: reinstalls only when pyproject.toml changes).
# torch is installed first and pinned to 2.13.0: that CPU wheel lies on disk on our machines, any
# other version downloads a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.fm-agent-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -e '.[test,envs]'
  echo "$want" > "$stamp"
fi
