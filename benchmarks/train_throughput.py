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
"""

from __future__ import annotations

import argparse
import time

import hf_reference
import torch

from common import (TASK_ORDER, MatmulPeak, Stopwatch, TokenStats, add_common_args, build_minbert, describe,
                    describe_model, load_run_config)  # fmt: skip
from minbert import distributed
from minbert.runs import encode_all, read_all
from minbert.tasks.losses import task_loss
from minbert.training.loop import make_optimizer
from minbert.training.state import TaskStream, set_seed


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
        super().__init__(self.model.bert.config, args.device)
        self.model.to(args.device).train()
        self.optimizer = hf_reference.make_optimizer(self.model)
        self.raw = raw_train
        self.batches = {t: hf_reference.RandomBatches(len(raw_train[t]), args.batch_size, cfg.train.seed + i)
                        for i, t in enumerate(TASK_ORDER)}  # fmt: skip

    def step(self, task: str):
        examples = [self.raw[task][i] for i in self.batches[task].next()]
        masks, tok_seconds = hf_reference.train_step(
            self.model, self.tokenizer, self.optimizer, task, examples, self.device
        )
        return len(examples), masks, tok_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=60, help="timed steps (default 60: 20 rounds)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps first (default 6)")
    args = parser.parse_args()

    cfg = load_run_config(args.data_dir, args.as_configured)
    set_seed(cfg.train.seed)
    raw_train = read_all(cfg, {"train": TASK_ORDER})["train"]
    kinds = [k for k in (Minbert, Reference) if args.only in (None, k.name)]
    sides = [kind(cfg, raw_train, args) for kind in kinds]
    meter = MatmulPeak(args.device)
    meter.sample(reps=3)

    for i in range(args.warmup + args.steps):
        for side in sides:
            side.run_step(TASK_ORDER[i % len(TASK_ORDER)], timed=i >= args.warmup)
        if i % len(TASK_ORDER) == len(TASK_ORDER) - 1:
            meter.sample()  # once per round, between steps
    peak = meter.flops

    config = sides[0].stats.config
    print(f"device: {describe(args.device)}")
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
