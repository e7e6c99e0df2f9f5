"""Training throughput, minbert vs a plain Hugging Face loop, in examples per second.

What: fine-tuning steps over the real task mix (round-robin sst, para, sts over the three
shared training sets), batch size 32, for
- minbert, on its own training path: `build_model` from minbert/configs/main.yaml, data tokenised once
  up front by `encode_all`, length-bucketed batches from `TaskStream` (main.yaml's
  train.bucket_batches), both sides of a pair in
  one encoder forward, `make_optimizer(..., fused=True)`, `task_loss`; main.yaml's model section
  is set to the reference's model (pooler output, siamese pairs, the seed report's heads), so
  both sides compute the same function (--as-configured keeps main.yaml's own model);
- the reference in hf_reference.py: transformers.BertModel on the same checkpoint, the slow
  BertTokenizer on every batch, random batches, one forward per pair side, plain AdamW.
How: the two sides alternate step by step in one process (same machine, threads and
background load); the first --warmup steps of each are not timed. Only the training loop is
timed (the reference's loop includes its per-batch tokenising, as a user's would); minbert's
up-front tokenisation is reported on its own line. An example is a sentence or a pair.
MFU: training FLOP/s (3 x the forward FLOPs of minbert.model.flops_per_token; model FLOPs
count non-pad tokens, hardware FLOPs the padded tokens computed) over the FLOP/s of a large
matmul timed by this script at the same thread count (best of samples taken between rounds).
Run (from the repository root):
    nice -n 10 python benchmarks/train_throughput.py [--steps 60] [--batch-size 32] [--warmup 6]
        [--data-dir DIR] [--device cpu|cuda] [--random-init-base] [--only minbert|reference]
        [--as-configured]
The last line is `ratio: X`, minbert's examples/s over the reference's.

--compile-compare (issue 22): minbert alone, the main job's model as configured (main.yaml:
cross-encoded pairs, mean pooling) on the main job's real batches (TaskStream, round-robin
sst/para/sts, batch 32), in sides that alternate step by step in one process: today's default
(eager, each batch padded to its longest row), eager + length buckets, compiled + buckets (static
shapes, one graph per bucket) and, with --dynamic, compiled without buckets (dynamic shapes).
Each side has its own model and optimizer. Before the timed steps, every side trains one batch
per bucket shape (the compiled sides compile there; that time is reported on its own), then
--warmup untimed steps. Printed: each side's examples/s and ratio to the default, its padding
and MFU, the compile time, the padding fraction of a whole pass over each task's training set,
and an end-to-end estimate for the main job's step count (configs/main.yaml).
    python benchmarks/train_throughput.py --compile-compare [--threads 2] [--steps 120]
        [--buckets 32,64,96,128] [--dynamic] [--compile-mode default|reduce-overhead|max-autotune]

--precision fp32|bf16|auto (default auto, as train.precision): both sides' precision, the
reference's autocast included (a Trainer user's `bf16=True` on the CPU is the same autocast); MFU
is then over the matmul peak of that dtype.

--precision-compare (issue 31): minbert alone, the main job's model as configured, on its own
batches, in fp32 and in bf16 autocast, the two sides alternating step by step; each side's
examples/s and MFU over its own dtype's matmul peak. Last line `ratio: X`, bf16 over fp32.
    python benchmarks/train_throughput.py --precision-compare [--steps 60] [--profile 12]
"""

from __future__ import annotations

import argparse
import random
import time

import hf_reference
import torch

from common import (TASK_ORDER, MatmulPeak, Stopwatch, TokenStats, add_common_args, build_minbert, cpu_name, describe,
                    describe_model, load_run_config, resolved)  # fmt: skip
from minbert import distributed
from minbert.runs import encode_all, needed_splits, read_all
from minbert.tasks.data import bucket_length, length_bucketed_batches
from minbert.tasks.losses import task_loss
from minbert.training.loop import make_optimizer
from minbert.training.samplers import epoch_schedule
from minbert.training.state import TaskStream, compile_encoder, set_seed


class Side:
    """One contestant: `step(task)` runs one training step and returns (examples, attention
    masks of its encoder forwards, seconds spent tokenising)."""

    name: str

    def __init__(self, config, device: str):
        self.device = device
        self.watch = Stopwatch(device)
        self.stats = TokenStats(config)
        self.examples = 0
        self.loop_tokenize_seconds = 0.0

    def run_step(self, task: str, timed: bool) -> None:
        if not timed:
            self.step(task)
            return
        with self.watch:
            n, masks, tok_seconds = self.step(task)
        self.examples += n
        self.loop_tokenize_seconds += tok_seconds
        for mask in masks:
            self.stats.add(mask.cpu())

    @property
    def rate(self) -> float:
        return self.examples / self.watch.seconds


class Minbert(Side):
    name = "minbert"

    def __init__(self, cfg, raw_train, args):
        self.model, tokenizer = build_minbert(cfg, args.random_init_base)
        super().__init__(self.model.bert.config, args.device)
        start = time.perf_counter()
        self.data = encode_all({"train": raw_train}, tokenizer, cfg)["train"]
        self.upfront_tokenize_seconds = time.perf_counter() - start
        self.model.to(args.device).train()
        self.optimizer = make_optimizer(self.model, cfg.train.phases[0], fused=True)
        self.streams = {t: TaskStream(t) for t in TASK_ORDER}
        self.batch_size, self.seed, self.train_cfg = args.batch_size, cfg.train.seed, cfg.train
        self.precision = resolved(args.device, cfg.train.precision)

    def step(self, task: str):
        indices = self.streams[task].next_indices(self.data[task], self.batch_size, self.seed,
                                                  self.train_cfg.bucket_batches)  # fmt: skip
        batch = self.data[task].batch(indices).to(self.device)
        with distributed.autocast(torch.device(self.device), self.train_cfg.precision):  # as train._run_epoch
            loss = task_loss(self.model.tasks[task], self.model(task, batch).float(), batch.labels, self.train_cfg.sts_loss)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return len(indices), [batch.attention_mask], 0.0


class Reference(Side):
    name = "reference"

    def __init__(self, cfg, raw_train, args):
        self.model, self.tokenizer = hf_reference.load_reference(cfg.model.head_dropout, args.random_init_base)
        self.precision = resolved(args.device, args.precision)
        super().__init__(self.model.bert.config, args.device)
        self.model.to(args.device).train()
        self.optimizer = hf_reference.make_optimizer(self.model)
        self.raw = raw_train
        self.batches = {t: hf_reference.RandomBatches(len(raw_train[t]), args.batch_size, cfg.train.seed + i)
                        for i, t in enumerate(TASK_ORDER)}  # fmt: skip

    def step(self, task: str):
        examples = [self.raw[task][i] for i in self.batches[task].next()]
        masks, tok_seconds = hf_reference.train_step(
            self.model, self.tokenizer, self.optimizer, task, examples, self.device, self.precision
        )
        return len(examples), masks, tok_seconds


# ---------------------------------------------------------------------------------------
# --compile-compare


class Variant(Minbert):
    """minbert's training step on the main job's model with train.length_buckets and
    train.compile as given (what `minbert train` would do with those keys)."""

    def __init__(self, name: str, raw_train, args, buckets: list[int] | None, compiled: bool):
        cfg = load_run_config(args.data_dir, as_configured=True, precision=args.precision)
        cfg.train.length_buckets, cfg.train.compile = buckets, compiled
        if compiled and buckets:
            cfg.train.compile_mode = args.compile_mode
        self.name, self.compiled = name, compiled
        super().__init__(cfg, raw_train, args)
        self.compile_seconds = 0.0
        if compiled:
            compile_encoder(self.model, cfg)

    def step_on(self, task: str, indices: list[int]) -> float:
        """One training step on the given examples (the warm-up's shapes); its seconds."""
        saved = self.streams[task]
        self.streams[task] = _Fixed(indices)
        start = time.perf_counter()
        self.step(task)
        seconds = time.perf_counter() - start
        self.streams[task] = saved
        return seconds


class _Fixed:
    def __init__(self, indices: list[int]):
        self.indices = indices

    def next_indices(self, *args) -> list[int]:
        return self.indices


def shape_batches(data, buckets: list[int], batch_size: int) -> list[list[int]]:
    """A batch of `batch_size` examples for each bucket some example of `data` reaches: one
    example whose padded length falls in that bucket and the shortest others."""
    order = sorted(range(len(data)), key=lambda i: data.lengths[i])
    out, low = [], 0
    for b in sorted({*buckets, max(data.lengths)}):
        inside = [i for i in order if low < data.lengths[i] <= b]
        if inside:
            out.append([inside[-1]] + [i for i in order[: batch_size] if i != inside[-1]][: batch_size - 1])
        low = b
    return out


def padding_fraction(data, batch_size: int, bucket_batches: int, seed: int) -> float:
    """Padded positions over all positions in one pass of training batches over `data` (as
    TaskStream cuts them), each padded as `data` pads it (to its bucket where it has buckets)."""
    real = padded = 0
    for indices in length_bucketed_batches(data.lengths, batch_size, random.Random(f"{seed}/padding"), bucket_batches):
        for side in data.sides:
            lengths = [len(side[i]) for i in indices]
            real += sum(lengths)
            padded += len(lengths) * bucket_length(max(lengths), data.buckets)
    return 1 - real / padded


def main_job_steps() -> int:
    """The optimizer steps of the main job (minbert/configs/main.yaml)."""
    cfg = load_run_config(None, as_configured=True)
    raw = read_all(cfg, {"train": needed_splits(cfg)["train"]})["train"]
    total = 0
    for i, phase in enumerate(cfg.train.phases):
        sizes = {t: len(raw[t]) for t in phase.tasks}
        total += sum(len(epoch_schedule(phase.sampler, sizes, cfg.train.batch_size, cfg.train.seed + i, (e, phase.epochs),
                                        phase.steps_per_epoch)) for e in range(phase.epochs))  # fmt: skip
    return total


def compile_compare(args) -> None:
    torch.set_num_threads(args.threads)
    buckets = [int(b) for b in args.buckets.split(",")]
    cfg = load_run_config(args.data_dir, as_configured=True)
    set_seed(cfg.train.seed)
    raw_train = read_all(cfg, {"train": TASK_ORDER})["train"]
    plan = [("eager", None, False), ("eager+buckets", buckets, False), ("compiled+buckets", buckets, True)]
    if args.dynamic:
        plan.append(("compiled dynamic", None, True))
    sides = [Variant(name, raw_train, args, b, c) for name, b, c in plan]
    meter = MatmulPeak(args.device, args.precision)
    meter.sample(reps=3)
    print(f"load average before: {open('/proc/loadavg').read().split()[0]}", flush=True)

    warm = {t: shape_batches(sides[1].data[t], buckets, args.batch_size) for t in TASK_ORDER}
    for side in sides:  # every bucket shape once per task (the compiled sides compile here)
        start = time.perf_counter()
        for t in TASK_ORDER:
            for indices in warm[t]:
                side.step_on(t, indices)
        side.compile_seconds = time.perf_counter() - start
        print(f"{side.name}: warm-up of {sum(map(len, warm.values()))} shape batches: {side.compile_seconds:.1f} s",
              flush=True)
    for i in range(args.warmup + args.steps):
        for side in sides:
            side.run_step(TASK_ORDER[i % len(TASK_ORDER)], timed=i >= args.warmup)
        if i % len(TASK_ORDER) == len(TASK_ORDER) - 1:
            meter.sample()
        if (i + 1) % 6 == 0:
            print(f"  step {i + 1}: " + ", ".join(f"{s.name} {s.rate:.2f}/s" for s in sides if s.watch.seconds), flush=True)
    peak = meter.flops
    print(f"load average after: {open('/proc/loadavg').read().split()[0]}")
    print(f"device: {describe(args.device, args.precision)}; matmul peak: {meter}")
    print(f"encoder: {describe_model(cfg, False)}; batch size {args.batch_size}; buckets {buckets}; "
          f"{args.steps} timed steps per side round-robin {'/'.join(TASK_ORDER)} after {args.warmup} untimed; "
          f"sides alternate step by step")  # fmt: skip
    from torch._dynamo.utils import counters

    breaks = dict(counters["graph_break"])
    print(f"graph breaks: {sum(breaks.values())} {breaks if breaks else ''}")
    base = sides[0].rate
    steps = main_job_steps()
    per_step = {s.name: s.watch.seconds / args.steps for s in sides}
    for side in sides:
        st = side.stats
        mfu = 100 * 3 * st.model_flops / side.watch.seconds / peak
        eager_warm = sides[0].compile_seconds
        compile_s = side.compile_seconds - eager_warm if side.compiled else 0.0
        total = steps * per_step[side.name] + compile_s
        print(f"{side.name}: {side.rate:.2f} examples/s, {1e3 * per_step[side.name]:.0f} ms/step, ratio {side.rate / base:.3f} | "
              f"{100 * st.pad_fraction:.1f}% padding | MFU {mfu:.1f}% | compile {compile_s:.0f} s | main job "
              f"({steps} steps) {total / 60:.1f} min, end-to-end ratio {steps * per_step['eager'] / total:.3f}")  # fmt: skip
    for t in TASK_ORDER:
        fractions = [padding_fraction(sides[i].data[t], args.batch_size, cfg.train.bucket_batches, cfg.train.seed)
                     for i in (0, 1)]
        print(f"padding over one pass of {t}: {100 * fractions[0]:.1f}% without buckets, {100 * fractions[1]:.1f}% with")


def precision_compare(args) -> None:
    """The main job's model as configured (main.yaml), on its own batches, in fp32 and in bf16
    autocast: two sides, each with its own model and optimizer from the same weights, alternating
    step by step. MFU of each over the matmul peak of its own dtype, both peaks sampled between
    rounds. Last line: `ratio: X`, bf16's examples/s over fp32's."""
    if resolved(args.device, "auto") != "bf16":
        print(f"note: {distributed.resolve_precision(torch.device(args.device), 'auto')[1]}: bf16 is emulated here, "
              "and minbert's auto precision would train in fp32")  # fmt: skip
    cfg = {p: load_run_config(args.data_dir, as_configured=True, precision=p) for p in ("fp32", "bf16")}
    set_seed(cfg["fp32"].train.seed)
    raw_train = read_all(cfg["fp32"], {"train": TASK_ORDER})["train"]
    sides = {p: Minbert(c, raw_train, args) for p, c in cfg.items()}
    meters = {p: MatmulPeak(args.device, p) for p in sides}
    for m in meters.values():
        m.sample(reps=3)
    print(f"load average before: {open('/proc/loadavg').read().split()[0]}", flush=True)
    for i in range(args.warmup + args.steps):
        for side in sides.values():
            side.run_step(TASK_ORDER[i % len(TASK_ORDER)], timed=i >= args.warmup)
        if i % len(TASK_ORDER) == len(TASK_ORDER) - 1:
            for m in meters.values():
                m.sample()
    print(f"load average after: {open('/proc/loadavg').read().split()[0]}")
    print(f"cpu: {cpu_name()}; {torch.get_num_threads()} torch threads")
    print(f"encoder: {describe_model(cfg['fp32'], False)}; batch size {args.batch_size}; {args.steps} timed steps per "
          f"side round-robin {'/'.join(TASK_ORDER)} after {args.warmup} untimed; the sides alternate step by step")  # fmt: skip
    for p, side in sides.items():
        st = side.stats
        mfu = 100 * 3 * st.model_flops / side.watch.seconds / meters[p].flops
        print(f"{p}: {side.rate:.2f} examples/s, {1e3 * side.watch.seconds / args.steps:.0f} ms/step | "
              f"{100 * st.pad_fraction:.1f}% padding | matmul peak {meters[p]} | MFU {mfu:.1f}%")  # fmt: skip
    if args.profile:
        for p, side in sides.items():
            profile_steps(side, p, args.profile)
    print(f"ratio: {sides['bf16'].rate / sides['fp32'].rate:.2f}")


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def profile_steps(side: Minbert, name: str, steps: int) -> None:
    """Where `steps` more steps of `side` spend their time: ms per step in matmul kernels and in
    each of the other operators with the most self time (torch.profiler, CPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            side.step(TASK_ORDER[i % len(TASK_ORDER)])
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) / 1000 / steps
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / 1000 / steps
    rest = sorted((e for e in events if e.key not in MATMULS), key=lambda e: -e.self_cpu_time_total)
    print(f"{name} profile, {steps} steps: {total:.1f} ms/step of operator self time; matmuls {matmul:.1f} "
          f"({100 * matmul / total:.0f}%); the rest by operator (ms/step):")  # fmt: skip
    print("  " + ", ".join(f"{e.key.removeprefix('aten::')} {e.self_cpu_time_total / 1000 / steps:.1f}" for e in rest[:14]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=60, help="timed steps (default 60: 20 rounds)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps first (default 6)")
    parser.add_argument("--compile-compare", action="store_true", help="eager vs length buckets vs compiled (issue 22)")
    parser.add_argument("--buckets", default="32,64,96,128", help="--compile-compare's length buckets")
    parser.add_argument("--threads", type=int, default=2, help="--compile-compare's torch threads (default 2)")
    parser.add_argument("--dynamic", action="store_true", help="--compile-compare: also compiled without buckets (dynamic)")
    parser.add_argument("--precision-compare", action="store_true", help="fp32 vs bf16 autocast, the main job's model")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="--precision-compare: then profile N more steps of each side, by operator")
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                        help="--compile-compare: train.compile_mode of the compiled + buckets side (reduce-overhead: CUDA)")
    args = parser.parse_args()
    if args.compile_compare:
        compile_compare(args)
        return
    if args.precision_compare:
        precision_compare(args)
        return

    cfg = load_run_config(args.data_dir, args.as_configured, args.precision)
    set_seed(cfg.train.seed)
    raw_train = read_all(cfg, {"train": TASK_ORDER})["train"]
    kinds = [k for k in (Minbert, Reference) if args.only in (None, k.name)]
    sides = [kind(cfg, raw_train, args) for kind in kinds]
    meter = MatmulPeak(args.device, args.precision)
    meter.sample(reps=3)

    for i in range(args.warmup + args.steps):
        for side in sides:
            side.run_step(TASK_ORDER[i % len(TASK_ORDER)], timed=i >= args.warmup)
        if i % len(TASK_ORDER) == len(TASK_ORDER) - 1:
            meter.sample()  # once per round, between steps
    peak = meter.flops

    config = sides[0].stats.config
    print(f"device: {describe(args.device, args.precision)}")
    print(f"encoder: {describe_model(cfg, args.random_init_base)}")
    print(f"{config.num_hidden_layers} layers, hidden {config.hidden_size}; batch size "
          f"{args.batch_size}; {args.steps} timed steps round-robin {'/'.join(TASK_ORDER)} after {args.warmup} "
          f"untimed{'; the two sides alternate step by step' if len(sides) == 2 else ''}")  # fmt: skip
    sizes = {t: len(raw_train[t]) for t in TASK_ORDER}
    print(f"training sets: {sizes}")
    print(f"matmul peak: {meter}, sampled between rounds")
    for side in sides:
        s = side.stats
        print(f"{side.name}: {side.examples} examples in {side.watch.seconds:.2f} s = {side.rate:.2f} examples/s "
              f"| tokens: {s.real_tokens} real, {s.padded_tokens} computed ({100 * s.pad_fraction:.1f}% padding)")
        if isinstance(side, Minbert):
            n = sum(len(d) for d in side.data.values())
            print(f"  tokenisation, once up front (not in the timed loop): {side.upfront_tokenize_seconds:.2f} s "
                  f"for all {n} training examples")
        else:
            print(f"  tokenisation inside the timed loop: {side.loop_tokenize_seconds:.2f} s")
        model_rate, hw_rate = (3 * s.model_flops / side.watch.seconds, 3 * s.hardware_flops / side.watch.seconds)
        print(f"  training FLOP/s (3 x forward): {model_rate / 1e9:.2f} G model (non-pad tokens), "
              f"{hw_rate / 1e9:.2f} G hardware (padded tokens computed) = {100 * model_rate / peak:.1f}% / "
              f"{100 * hw_rate / peak:.1f}% of the matmul peak")  # fmt: skip
    if isinstance(sides[0], Minbert):
        # MFU counts model FLOPs (non-pad tokens); the hardware share is on the minbert line above.
        print(f"MFU: {100 * 3 * sides[0].stats.model_flops / sides[0].watch.seconds / peak:.1f}%")
    if len(sides) == 2:
        print(f"ratio: {sides[0].rate / sides[1].rate:.2f}")


if __name__ == "__main__":
    main()
