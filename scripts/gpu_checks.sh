#!/usr/bin/env bash
# The GPU rows of docs/RESULTS.md, in one pass on one CUDA machine:
# 1. benchmarks, alone on the GPU: train throughput with a random bert-base-sized encoder and with
#    the embedded checkpoint (both vs the Hugging Face reference), a minbert-only bert-base run at
#    batch 128 (the MFU a bigger batch reaches), predict throughput;
# 2. then, side by side on the same GPU, one process each: the rows of the ablation table
#    (scripts/ablations.sh at EPOCHS x STEPS, default 2 x 567) and a sweep of longer recipes
#    (PHASES and EXTRA below), each stopped after SWEEP_SECONDS.
# Usage: scripts/gpu_checks.sh OUT_DIR DATA_DIR   (each part writes OUT_DIR/<part>.log)
# Environment: SKIP_BENCH=1 skips part 1; ABLATION_ROWS and SWEEP name the rows and recipes to run
# (default: all; docs/RESULTS.md says which ran together).
set -uo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR DATA_DIR}
data=${2:?usage: scripts/gpu_checks.sh OUT_DIR DATA_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

bench() {  # name, script, args...
  local name=$1 script=$2
  shift 2
  echo "== $name: python benchmarks/$script --device cuda --data-dir DATA $*" | tee "$out/bench_$name.log"
  python3 "benchmarks/$script" --device cuda --data-dir "$data" "$@" 2>&1 | tee -a "$out/bench_$name.log"
}
[ -n "${SKIP_BENCH:-}" ] || {
bench train_base train_throughput.py --random-init-base --steps 300 --warmup 30
bench train_embedded train_throughput.py --steps 300 --warmup 30
bench train_base_b128 train_throughput.py --random-init-base --only minbert --batch-size 128 --steps 120 --warmup 12
bench predict_embedded predict_throughput.py
# Issue 22: length buckets and compilation (eager, eager + buckets, compiled + buckets, compiled
# dynamic), then the compiled side with CUDA graphs (reduce-overhead, one graph per bucket).
bench compile_compare train_throughput.py --compile-compare --dynamic --steps 300 --warmup 30
bench compile_cudagraphs train_throughput.py --compile-compare --compile-mode reduce-overhead --steps 300 --warmup 30
}

# The recipes of the sweep: phases as YAML, on top of minbert/configs/main.yaml (the default config).
RR="name: multitask, tasks: [sst, para, sts], lr: 5.0e-5, head_lr: 5.0e-4, warmup_ratio: 0.1, decay: linear"
TAIL="{name: sst_only, tasks: [sst], epochs: 1, lr: 2.0e-5, decay: linear}, {name: sts_only, tasks: [sts], epochs: 1, lr: 2.0e-5, decay: linear}"
MLM="{name: mlm, mode: mlm, tasks: [sst, para, sts], epochs: 1, lr: 5.0e-5, warmup_ratio: 0.1, decay: linear}"
# name: phases (YAML flow list; empty = main.yaml's) | other overrides
declare -A PHASES=(
  [s1_rr6]="[{$RR, epochs: 6}, $TAIL]"
  [s2_rr6_phrases_cosent]="[{$RR, epochs: 6}, $TAIL]"
  [s3_rr6_cosent]="[{$RR, epochs: 6}, $TAIL]"
  [s4_rr6_layer_decay]="[{$RR, epochs: 6, layer_lr_decay: 0.9}, $TAIL]"
  [s5_proportional4]="[{$RR, epochs: 4, sampler: proportional}, $TAIL]"
  [s6_mlm_rr6]="[$MLM, {$RR, epochs: 6}, $TAIL]"
  [s7_rr12]="[{$RR, epochs: 12}, $TAIL]"
  [s8_proportional4_cosent]="[{$RR, epochs: 4, sampler: proportional}, $TAIL]"
  [s9_proportional6]="[{$RR, epochs: 6, sampler: proportional}, $TAIL]"
  [s10_rr6_lr1e-4]="[{${RR/lr: 5.0e-5/lr: 1.0e-4}, epochs: 6}, $TAIL]"
)
declare -A EXTRA=(
  [s0_best_compile]="--train.compile=true"
  [s0_best_buckets]="--train.length_buckets=[32,64,96,128]"
  [s0_best_buckets_compile]="--train.compile=true --train.length_buckets=[32,64,96,128]"
  [s0_best_cudagraphs]="--train.compile=true --train.compile_mode=reduce-overhead --train.length_buckets=[32,64,96,128]"
  [s2_rr6_phrases_cosent]="--data.sst_phrases=true --train.sts_loss=mse+cosent"
  [s3_rr6_cosent]="--train.sts_loss=mse+cosent"
  [s8_proportional4_cosent]="--train.sts_loss=mse+cosent"
)
names=${SWEEP-"s0_best s0_best_compile s0_best_buckets s0_best_buckets_compile s0_best_cudagraphs s1_rr6 s2_rr6_phrases_cosent s3_rr6_cosent s4_rr6_layer_decay s5_proportional4
  s6_mlm_rr6 s7_rr12 s8_proportional4_cosent s9_proportional6 s10_rr6_lr1e-4"}
seconds=${SWEEP_SECONDS:-300}
pids=()
# The ablation table at a larger budget than the CPU's (EPOCHS x STEPS), one process per row.
for row in ${ABLATION_ROWS-base cross mean_pool annealed proportional warmup_decay layer_decay head_lr sst_phrases cosent mlm combined combined_all}; do
  ABLATIONS=$row EPOCHS=${EPOCHS:-2} STEPS=${STEPS:-567} timeout "$seconds" bash scripts/ablations.sh "$out/ablations" \
    --data.dir="$data" --train.threads=1 >"$out/ablation_$row.log" 2>&1 &
  pids+=($!)
done
for name in $names; do
  args=(--out "$out/sweep/$name" --no-progress --data.dir="$data" --train.threads=1 --train.predict_test=false)
  [ -n "${PHASES[$name]:-}" ] && args+=("--train.phases=${PHASES[$name]}")
  # shellcheck disable=SC2206
  args+=(${EXTRA[$name]:-})
  timeout "$seconds" minbert train "${args[@]}" >"$out/sweep_$name.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
echo "sweep and ablations done (or stopped after ${seconds}s)"
