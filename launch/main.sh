#!/usr/bin/env bash
# Set up (first run only), then the main job: the embedded LIBERO policy served over gRPC and one
# standard-protocol libero_spatial episode rolled out through it. Extra arguments go to libero_eval.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
exec .venv/bin/python launch/libero_eval.py --checkpoint checkpoints/libero_spatial --suite libero_spatial \
  --tasks 7 --init-states 10 --videos 1 --out runs/main "$@"
