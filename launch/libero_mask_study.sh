#!/usr/bin/env bash
# The LIBERO mask study of issue #21 (item 4) in one command, on the 50 held-out episodes (tasks 0-9 x
# official initial states 10-14, which no demonstration or DAgger episode starts from):
#   (a) training-free: the shipped, causally trained policy under causal, Mf, Mv2v, Mv2t, and each
#       future-aware mask with merge;
#   (b) mask-trained: the shipped policy fine-tuned on the DAgger data under causal, Mf, Mv2t and
#       Mf+merge (the recipe of the model card's d2 policy), each evaluated under its training mask.
# Then one table and one plot of every arm (fm-agent compare).
#
# usage: bash launch/libero_mask_study.sh OUT DAGGER_DIR...
#   OUT         where runs, evaluations, the table (OUT/mask_study.md) and the plot (OUT/mask_study.png) go
#   DAGGER_DIR  the DAgger rounds to fine-tune on (the model card's `fm-agent dagger` commands make them)
#
# Every step resumes from what it wrote, so re-running the same command after an interruption
# continues. About 3 h 15 min on a 2-core CPU machine: the 7 training-free arms run as one sweep of
# 350 episodes (1 h 50 min with 2 simulator workers), then each mask-trained arm needs 11-18 min of
# training and about 14 min of evaluation.
set -euo pipefail
if [[ $# -lt 2 || $1 == -h || $1 == --help ]]; then
  sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"  # this header, without the comment marks
  exit 2
fi
cd "$(dirname "$0")/.."
out=$1
shift
for dir in "$@"; do
  [[ -d $dir ]] || { echo "no DAgger data at $dir (run the model card's fm-agent dagger commands)" >&2; exit 2; }
done
export MUJOCO_GL=${MUJOCO_GL:-egl}
py=.venv/bin/python
fm=.venv/bin/fm-agent
episodes=(--suite libero_spatial --tasks 0 1 2 3 4 5 6 7 8 9 --init-states 10 11 12 13 14 --workers 2 --server-threads 1)

$py launch/libero_eval.py --checkpoint checkpoints/libero_spatial "${episodes[@]}" \
  --masks Mf Mv2v Mv2t Mv2v+merge Mv2t+merge causal Mf+merge --out "$out/training_free"

summaries=("$out/training_free")
labels=(training-free)
for mask in causal Mf Mv2t Mf+merge; do
  name=$(echo "$mask" | tr 'A-Z+' 'a-z_')
  $fm train --preset libero --data "$@" --init checkpoints/libero_spatial --out "$out/trained_$name" \
    --train-mask "$mask" --steps 1200 --lr 3e-4 --image-shift 4 --validate-every 300 --threads 2
  $py launch/libero_eval.py --checkpoint "$out/trained_$name" "${episodes[@]}" --masks "$mask" \
    --out "$out/eval_trained_$name"
  summaries+=("$out/eval_trained_$name")
  labels+=("trained-$mask")
done

$fm compare --summaries "${summaries[@]}" --labels "${labels[@]}" --out "$out/mask_study.png"
