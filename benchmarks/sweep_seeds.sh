#!/usr/bin/env bash
# The check after benchmarks/sweep_main.sh (docs/RESULTS.md): the baseline trial's config
# (SWEEP/trial-0000/config.yaml, main.yaml at the sweep's budget) and the best one (SWEEP/best.yaml)
# trained again with more seeds, at the same budget, two runs at a time; then each run's dev
# scores. With the sweep's seed 11711 these make 3 seeds per config. A seed also draws the capped
# train and dev samples (data.max_*_examples), the same for both configs.
# Usage: benchmarks/sweep_seeds.sh SWEEP OUT_DIR [SEEDS (default "11712 11713")]
set -euo pipefail
sweep=${1:?usage: benchmarks/sweep_seeds.sh SWEEP OUT_DIR [SEEDS]}
out=${2:?usage: benchmarks/sweep_seeds.sh SWEEP OUT_DIR [SEEDS]}
seeds=${3:-11712 11713}
mkdir -p "$out"
for seed in $seeds; do
  for name in baseline best; do
    config=$sweep/best.yaml
    [ "$name" = baseline ] && config=$sweep/trial-0000/config.yaml
    python -m minbert.cli train --config "$config" --out "$out/$name-$seed" --no-progress --train.seed="$seed" \
      > "$out/$name-$seed.log" 2>&1 &
  done
  wait
done
for run in "$out"/*/; do
  echo "$(basename "$run") $(python -c 'import json, sys; m = json.load(open(sys.argv[1])); print(*(f"{k} {m[k]:.4f}" for k in ("sst", "para", "sts", "overall")))' "$run/metrics.json")"
done
