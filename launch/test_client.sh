#!/usr/bin/env bash
# The client distribution's tests in an environment of its own: grpcio, protobuf, numpy, Pillow, pytest and
# no torch, as a robot controller installs it. The round trip talks to a real server started from .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
venv=${CLIENT_VENV:-.venv-client}
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet './client[images,test]'
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "the client environment must not hold torch" >&2
  exit 1
fi
cd client
FM_AGENT_SERVER_PYTHON="$(cd .. && pwd)/.venv/bin/python" exec "../$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
