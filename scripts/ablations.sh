#!/usr/bin/env bash
# The ablation table of docs/RESULTS.md: configs/ablation_base.yaml, then each technique alone,
# then all of them together. Usage: scripts/ablations.sh OUT_DIR [extra overrides...]
# Each run prints its dev scores; OUT_DIR/<name>/metrics.json keeps them.
set -euo pipefail
out=${1:?usage: scripts/ablations.sh OUT_DIR [overrides...]}
shift
P0="train.phases.0"
declare -A RUNS=(
  [base]=""
  [cross]="--model.pair_encoding=cross"
  [mean_pool]="--model.pooling=mean"
  [annealed]="--$P0.sampler=annealed"
  [proportional]="--$P0.sampler=proportional"
  [warmup_decay]="--$P0.warmup_ratio=0.1 --$P0.decay=linear"
  [layer_decay]="--$P0.layer_lr_decay=0.9"
  [head_lr]="--$P0.head_lr=5e-4"
  [sst_phrases]="--data.sst_phrases=true"
  [cosent]="--train.sts_loss=mse+cosent"
  [mlm]="--train.phases=[{name: mlm, mode: mlm, tasks: [sst, para, sts], epochs: 1, steps_per_epoch: 120, lr: 5e-5},{name: round_robin, tasks: [sst, para, sts], epochs: 1, steps_per_epoch: 240, lr: 3e-5}]"
  [combined]="--model.pair_encoding=cross --model.pooling=mean --$P0.warmup_ratio=0.1 --$P0.decay=linear --$P0.head_lr=5e-4"
)
names=${ABLATIONS:-"base cross mean_pool annealed proportional warmup_decay layer_decay head_lr sst_phrases cosent mlm combined"}
for name in $names; do
  [ -f "$out/$name/metrics.json" ] && { echo "$name: done"; continue; }
  echo "== $name: ${RUNS[$name]}"
  # shellcheck disable=SC2086
  if [ "$name" = mlm ]; then
    minbert train --config ablation_base --out "$out/$name" --no-progress "${RUNS[$name]}" "$@"
  else
    minbert train --config ablation_base --out "$out/$name" --no-progress ${RUNS[$name]} "$@"
  fi
done
