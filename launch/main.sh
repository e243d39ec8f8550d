#!/usr/bin/env bash
# Set up (first run only), then the main job: the embedded LIBERO policy served over gRPC and one
# standard-protocol libero_spatial episode rolled out through it. Extra arguments go to libero_eval.py.
#
# Which episode: the first of the held-out evaluation (task 0, official initial state 10), by rule
# and not by outcome, so it shows the policy's typical behaviour; the policy's held-out success
# rate over all 50 evaluation episodes is printed beside the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
.venv/bin/python launch/libero_eval.py --checkpoint checkpoints/libero_spatial --suite libero_spatial \
  --tasks 0 --init-states 10 --videos 1 --out runs/main "$@"
.venv/bin/python - <<'PY'
import json
summary = json.load(open("docs/results/libero_spatial_sweep.json"))["masks"]["causal"]["overall"]
low, high = summary["ci95"]
print(f"for reference, this policy on all 50 held-out libero_spatial episodes (10 tasks x states 10-14, causal): "
      f"{summary['successes']}/{summary['episodes']} = {summary['success_rate']:.0%} (95% CI {low:.0%}-{high:.0%}); "
      "docs/results/libero_spatial_sweep.json, checkpoints/libero_spatial/MODEL_CARD.md")
PY
