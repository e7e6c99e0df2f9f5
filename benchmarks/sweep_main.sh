#!/usr/bin/env bash
# The main job's sweep in docs/RESULTS.md: minbert sweep of minbert/configs/main.yaml over
# benchmarks/sweep_main_space.yaml, at a budget that fits a shared 2-core CPU: every phase about
# 1/20 of main.yaml's steps (phrases 60 of 1,200; multitask one epoch of 120 steps instead of
# 4 x 567; sst_only 15 of 267; sts_only 10 of 189); each task's training examples capped at
# 20,000 (a seeded sample: Quora 20,000 of 283,003 and phrases 20,000 of 105,909, so the
# proportional sampler draws Quora 58% of the time instead of 76%; every trial encodes only
# these); each dev set capped at 1,000 (SST 1,000 of 1,101, Quora 1,000 of 5,000, STS all 863);
# no test predictions. 4 dev evaluations per trial (each phase's end), which the median pruner
# sees. Sampler seed 0, training seed 11711.
# Usage: benchmarks/sweep_main.sh OUT_DIR [TRIALS (default 8)] [more minbert sweep options]
set -euo pipefail
out=${1:?usage: benchmarks/sweep_main.sh OUT_DIR [TRIALS]}
trials=${2:-8}
shift $(( $# >= 2 ? 2 : 1 ))
here=$(cd "$(dirname "$0")/.." && pwd)
exec python -m minbert.cli sweep --config main --space "$here/benchmarks/sweep_main_space.yaml" \
  --trials "$trials" --out "$out" --seed 0 --no-progress "$@" \
  --train.phases.0.steps_per_epoch=60 \
  --train.phases.1.epochs=1 --train.phases.1.steps_per_epoch=120 \
  --train.phases.2.steps_per_epoch=15 --train.phases.3.steps_per_epoch=10 \
  --data.max_train_examples=20000 --data.max_eval_examples=1000 --train.predict_test=false
