#!/usr/bin/env bash
# The mask latency profile at the paper's scale, on a GPU: a LLaVA-7B-shaped decoder (Llama-2-7B:
# hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000) with random weights, 576-token frames
# (LLaVA's image tokens), contexts up to the paper's 4096, bf16 and fp16. Writes latency.json/.png.
#
#   bash launch/profile_gpu.sh [OUT] [extra fm-agent profile flags...]
#
# Needs a CUDA build of torch with transformers (this project's .venv holds the CPU build): PYTHON
# names the interpreter (default python3); fm-agent runs from this checkout, not an installed copy.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/latency_gpu_7b}
shift || true
PYTHONPATH="$PWD:$PWD/client/src${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m fm_agent.cli profile \
  --device cuda --hidden 4096 --layers 32 --heads 32 --kv-heads 32 --intermediate 11008 --vocab 32000 \
  --frame-tokens 576 --contexts 1024 2048 4096 --dtypes bfloat16 float16 \
  --repetitions 3 --decode-tokens 16 --full-decode-tokens 4 --out "$out" "$@"
