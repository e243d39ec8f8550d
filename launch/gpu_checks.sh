#!/usr/bin/env bash
# Everything fm-agent checks on a GPU, in one command sized for a 15-minute lease: the CUDA tests
# (the merge paths only a GPU takes, the fused Triton kernel itself, CUDA-graph decoding, a policy served
# on the GPU), then the LLaVA-7B-shaped latency profile twice: with the torch merge path (and decoding
# also timed on a static cache replayed from a CUDA graph) and with the fused kernel
# (FM_AGENT_FUSED_MERGE=1); last, the control step of the shipped policy on the GPU, exact step against
# CUDA graphs (fm-agent profile --step --device cuda --static-decode).
#
#   bash launch/gpu_checks.sh OUT        # OUT: where the logs and both profiles go
#
# On a machine without this project's pins, run bash launch/gpu_wheels.sh here first and carry .whl:
# they are installed to /tmp/site. Takes about 5-6 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash launch/gpu_checks.sh OUT}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
PYTHONPATH="$PWD:$PWD/client/src:${PYTHONPATH:-}" timeout 300 python3 -m pytest -q -p no:cacheprovider \
  tests/attention/test_accelerator_paths.py tests/attention/test_merge.py tests/attention/test_static_decode.py \
  tests/model/test_devices.py 2>&1 | tail -40 | tee "$out/pytest.txt"
specs=(--specs causal Mf/full Mf+merge Mv2t+merge)
bash launch/profile_gpu.sh "$out/torch_path" "${specs[@]}" --static-decode 2>&1 | tr '\r' '\n' | grep -v "run/s\]$" | tee "$out/torch_path.log"
FM_AGENT_FUSED_MERGE=1 bash launch/profile_gpu.sh "$out/fused" "${specs[@]}" 2>&1 | tr '\r' '\n' \
  | grep -v "run/s\]$" | tee "$out/fused.log"
PYTHONPATH="$PWD:$PWD/client/src:${PYTHONPATH:-}" timeout 240 python3 -m fm_agent.cli profile --step --device cuda \
  --static-decode --chunks 4 16 --step-repetitions 10 --out "$out/step" 2>&1 | tr '\r' '\n' \
  | grep -v "round/s\]$" | tee "$out/step.log"
