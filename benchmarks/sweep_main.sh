#!/usr/bin/env bash
# The main job's sweep in docs/RESULTS.md: minbert sweep of minbert/configs/main.yaml over
# benchmarks/sweep_main_space.yaml, at a budget that fits a 2-core CPU shared with other jobs
# (load 11-16 when it ran): every phase about 1/30 to 1/60 of main.yaml's steps (phrases 20 of
# 1,200; multitask one epoch of 40 steps instead of 4 x 567; sst_only 10 of 267; sts_only 10 of
# 189); each task's training examples capped at 5,000 (a seeded sample, so each trial encodes
# little; the proportional sampler then draws Quora 31% of the time instead of 76%); each dev
# set capped at 200 examples (a seeded sample); no test predictions; one torch thread. 4 dev
# evaluations per trial (each phase's end), which the median pruner sees. Sampler seed 0,
# training seed 11711.
# Usage: benchmarks/sweep_main.sh OUT_DIR [TRIALS (default 6)] [more minbert sweep options]
set -euo pipefail
out=${1:?usage: benchmarks/sweep_main.sh OUT_DIR [TRIALS]}
trials=${2:-6}
shift $(( $# >= 2 ? 2 : 1 ))
here=$(cd "$(dirname "$0")/.." && pwd)
exec python -m minbert.cli sweep --config main --space "$here/benchmarks/sweep_main_space.yaml" \
  --trials "$trials" --out "$out" --seed 0 --no-progress "$@" \
  --train.phases.0.steps_per_epoch=20 \
  --train.phases.1.epochs=1 --train.phases.1.steps_per_epoch=40 \
  --train.phases.2.steps_per_epoch=10 --train.phases.3.steps_per_epoch=10 \
  --data.max_train_examples=5000 --data.max_eval_examples=200 --train.predict_test=false --train.threads=1
