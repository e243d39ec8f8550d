#!/usr/bin/env bash
# Regenerate the protobuf/gRPC code from protos/ with the pinned grpcio-tools:
#   protos/fm_agent_client/v1/policy.proto -> client/src/fm_agent_client/v1/ (the wire contract ships with the client)
#   protos/fm_agent/v1/reflection_v1.proto -> fm_agent/v1/                    (server-side reflection v1)
# Usage: bash launch/gen_protos.sh [output root, default: the repository]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$out/client/src"
"$PY" -m grpc_tools.protoc -I protos --python_out="$out/client/src" --pyi_out="$out/client/src" \
  --grpc_python_out="$out/client/src" protos/fm_agent_client/v1/policy.proto
"$PY" -m grpc_tools.protoc -I protos --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  protos/fm_agent/v1/reflection_v1.proto
