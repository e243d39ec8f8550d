#!/usr/bin/env bash
# Create .venv and install fm-agent with what it needs. Idempotent: reinstalls only when
# pyproject.toml or this script changes.
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
want=$(cat pyproject.toml client/pyproject.toml launch/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet torch==2.13.0
  # the client distribution first (fm-agent depends on it), both editable, in one resolve
  .venv/bin/python -m pip install --quiet -e ./client -e '.[test,envs,ray]'
  # openpi's real client, for the tests of the openpi endpoint and the transport benchmark. --no-deps:
  # its metadata asks for numpy<2, though the modules used here run on ours (msgpack and websockets
  # are fm-agent's own dependencies).
  .venv/bin/python -m pip install --quiet --no-deps openpi-client==0.1.2
  echo "$want" > "$stamp"
fi
