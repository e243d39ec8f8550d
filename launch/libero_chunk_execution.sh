#!/usr/bin/env bash
# The chunk-execution study of issue #19 on LIBERO, on the 50 held-out episodes (tasks 0-9 x official
# initial states 10-14) with the shipped policy (chunk 4), at 20 Hz on the executor's simulated clock:
# every tick takes one 50 ms period whatever the simulator costs on this machine, and every policy call
# arrives LATENCY_MS after its observation. So the arms differ only in the executor's options:
#   latest without prefetch       the robot waits for every call (the wait baseline)
#   latest, prefetch 2            the next call starts with 2 actions left; the newer chunk wins
#   average, prefetch 2           the overlap merged 0.3 old + 0.7 new (LeRobot's weighted average)
#   ensemble, prefetch 2          the overlap merged by ACT's temporal ensembling
# The open-loop arm (no executor) is the causal arm of docs/results/libero_spatial_mask_sweep.json,
# the same 50 episodes. Then one success table and plot (fm-agent compare), which also lists each
# arm's jerk, waits, drops and merges.
#
# usage: bash launch/libero_chunk_execution.sh OUT [LATENCY_MS]
#   OUT         where the evaluations, the table (OUT/chunk_execution.md) and the plot go
#   LATENCY_MS  the simulated policy latency (default 40: the round trip measured here with one
#               simulator beside the server)
#
# Every arm resumes from what it wrote. About 15 min per arm on a 2-core CPU machine.
set -euo pipefail
if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"  # this header, without the comment marks
  exit 2
fi
cd "$(dirname "$0")/.."
out=$1
latency=${2:-40}
export MUJOCO_GL=${MUJOCO_GL:-egl}
fm=.venv/bin/fm-agent
episodes=(--suite libero_spatial --tasks 0 1 2 3 4 5 6 7 8 9 --init-states 10 11 12 13 14 --workers 2 --server-threads 1)
clock=(--control-hz 20 --simulated-latency-ms "$latency")

$fm eval-libero "${episodes[@]}" --executor latest "${clock[@]}" --out "$out/latest_no_prefetch"
for aggregate in latest average ensemble; do
  $fm eval-libero "${episodes[@]}" --executor "$aggregate" --prefetch 2 "${clock[@]}" --out "$out/${aggregate}_prefetch2"
done

$fm compare --summaries docs/results/libero_spatial_mask_sweep.json "$out/latest_no_prefetch" \
  "$out/latest_prefetch2" "$out/average_prefetch2" "$out/ensemble_prefetch2" --masks causal \
  --labels open-loop no-prefetch latest-p2 average-p2 ensemble-p2 --out "$out/chunk_execution.png"
