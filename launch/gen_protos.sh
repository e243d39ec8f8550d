#!/usr/bin/env bash
# Regenerate fm_agent/v1/*_pb2*.py (the policy service and reflection v1) from protos/ with the pinned grpcio-tools.
# Usage: bash launch/gen_protos.sh [output root, default: the repository]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I protos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  protos/fm_agent/v1/policy.proto protos/fm_agent/v1/reflection_v1.proto
