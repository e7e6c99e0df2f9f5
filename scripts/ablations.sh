#!/usr/bin/env bash
# The ablation table of docs/RESULTS.md: minbert/configs/ablation_base.yaml, then each technique alone,
# then techniques together. Usage: scripts/ablations.sh OUT_DIR [extra overrides...]
# Environment: ABLATIONS (rows to run, default all), EPOCHS and STEPS (the budget: round-robin
# epochs of STEPS steps; default 1 x 240, the CPU table; the MLM row first spends STEPS/2 steps on
# masked-LM). Each run prints its dev scores; OUT_DIR/<name>/metrics.json keeps them.
set -euo pipefail
out=${1:?usage: scripts/ablations.sh OUT_DIR [overrides...]}
shift
epochs=${EPOCHS:-1}
steps=${STEPS:-240}
P0="train.phases.0"
RR="{name: round_robin, tasks: [sst, para, sts], epochs: $epochs, steps_per_epoch: $steps, lr: 3e-5}"
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
  [mlm]=""
  [combined]="--model.pair_encoding=cross --model.pooling=mean --$P0.warmup_ratio=0.1 --$P0.decay=linear --$P0.head_lr=5e-4"
  [combined_all]="--model.pair_encoding=cross --model.pooling=mean --$P0.warmup_ratio=0.1 --$P0.decay=linear --$P0.head_lr=5e-4 --$P0.sampler=proportional --$P0.layer_lr_decay=0.9 --train.sts_loss=mse+cosent"
)
ALL="base cross mean_pool annealed proportional warmup_decay layer_decay head_lr sst_phrases cosent mlm combined combined_all"
for name in ${ABLATIONS:-$ALL}; do
  [ -f "$out/$name/metrics.json" ] && { echo "$name: done"; continue; }
  if [ "$name" = mlm ]; then
    phases=("--train.phases=[{name: mlm, mode: mlm, tasks: [sst, para, sts], epochs: 1, steps_per_epoch: $((steps / 2)), lr: 5e-5}, $RR]")
  else
    phases=("--train.phases=[$RR]")
  fi
  echo "== $name: ${RUNS[$name]} (budget: ${phases[0]})"
  # shellcheck disable=SC2086
  minbert train --config ablation_base --out "$out/$name" --no-progress "${phases[@]}" ${RUNS[$name]} "$@"
done
