"""Peak memory of bert-base training steps with and without gradient accumulation, on the CPU.

What: minbert's real `training.loop.train_step` (fp32, fused AdamW) on a bert-base-sized encoder
(12 layers, hidden 768, 12 heads, FFN 3072, random weights, the embedded vocabulary of 30,522)
with the SST head, at an effective batch of 32 examples of exactly 128 tokens: one batch of 32
(train.grad_accum_steps=1) against micro-batches of 8 (k=4) and 4 (k=8). Each side runs in its
own process: --steps optimizer steps (default 1) after AdamW's moments are allocated (an
optimizer step on zero gradients), so the first step is already the steady state.
Measured: the peak resident set (VmHWM of /proc/self/status, reset through /proc/self/clear_refs
once the model, data and AdamW moments are in place) minus the resident set at that point: what
a training step adds, the gradients (4 bytes a parameter, 422 MiB here), the activations kept
for the backward pass (what accumulation shrinks: one micro-batch's at a time) and allocator
slack. The weights (422 MiB), AdamW's moments (845 MiB), the data and the code are in the
baseline. On a GPU the same parts make up the peak
(with bf16 autocast, activations in half the bytes); this is a CPU proxy, not a GPU number.
Also: the seconds per optimizer step (median of the steps after the first, or the one), and the loss of the
first step on each side (the same 32 examples; dropout is on, and the micro-batches draw other
masks than the whole batch, so the losses differ by dropout noise).
Run (from the repository root):
    python benchmarks/grad_accum_memory.py [--steps 1] [--threads N]
Exit status non-zero on errors only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

SIDES = [(32, 1), (8, 4), (4, 8)]  # (micro-batch, accumulation steps): 32 examples a step each
TOKENS = 128
WORDS = "the a film movie good bad story plot actor scene music long short funny sad great dull".split()


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def write_data(folder: Path, rows: int) -> None:
    """An SST training file of `rows` sentences of 200 words: truncated to TOKENS tokens each."""
    rng = random.Random(0)
    lines = ["\tid\tsentence\tsentiment"]
    for i in range(rows):
        lines.append(f"{i}\tx{i:024d}\t{' '.join(rng.choice(WORDS) for _ in range(200))}\t{i % 5}")
    (folder / "ids-sst-train.csv").write_text("\n".join(lines) + "\n")


def side(micro: int, k: int, steps: int, threads: int | None) -> dict:
    import torch

    from minbert.config import load_config
    from minbert.model import BertConfig
    from minbert.runs import build_model, encode_all, read_all
    from minbert.training.logs import StepLog
    from minbert.training.loop import lr_lambda, make_optimizer, train_step
    from minbert.training.state import Run, TaskStream

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_data(tmp, micro * k * steps)
        cfg = load_config(None, [f"data.dir={tmp}", "tasks=[sst]", "model.max_length=128", f"train.batch_size={micro}",
                                 f"train.grad_accum_steps={k}", "train.phases=[{tasks: [sst], lr: 1e-5}]"])  # fmt: skip
        torch.manual_seed(0)
        model, tokenizer = build_model(cfg, asdict(BertConfig()))
        data = encode_all(read_all(cfg, {"train": ("sst",)}), tokenizer, cfg)["train"]
        assert all(n == TOKENS for n in data["sst"].lengths), "every example is TOKENS tokens"
        run = Run.bare(cfg, model.train(), data)
        run.out_dir = tmp
        run.streams = {"sst": TaskStream("sst")}
        phase = cfg.train.phases[0]
        run.optimizer = make_optimizer(model, phase, cfg.train.fused_adamw)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_lambda(phase, steps))
        log = StepLog(run)
        for p in model.parameters():  # AdamW's moments, allocated by a step on zero gradients
            p.grad = torch.zeros_like(p)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from here
        before = status_kib("VmRSS")
        seconds = []
        for _ in range(steps):
            started = time.perf_counter()
            train_step(run, phase, "sst", log)
            seconds.append(time.perf_counter() - started)
        peak = status_kib("VmHWM")
        first_loss = float(log.pending[0][2])
        n_params = sum(p.numel() for p in model.parameters())
    return {"micro_batch": micro, "grad_accum_steps": k, "steps": steps, "params": n_params,
            "baseline_mib": round(before / 1024), "peak_above_baseline_mib": round((peak - before) / 1024),
            "s_per_step": round(statistics.median(seconds[1:] or seconds), 1), "first_step_loss": round(first_loss, 6),
            "threads": torch.get_num_threads()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--side", nargs=2, type=int, metavar=("MICRO", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(*args.side, args.steps, args.threads)), flush=True)
        return 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    rows = []
    for micro, k in SIDES:
        cmd = [sys.executable, __file__, "--side", str(micro), str(k), "--steps", str(args.steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    full = rows[0]["peak_above_baseline_mib"]
    print(f"\n{'micro x k':>10} {'peak above baseline (MiB)':>26} {'vs 32 x 1':>10} {'s/step':>7} {'first loss':>11}")
    for r in rows:
        print(f"{r['micro_batch']:>5} x {r['grad_accum_steps']:<2} {r['peak_above_baseline_mib']:>26} "
              f"{r['peak_above_baseline_mib'] / full:>10.2f} {r['s_per_step']:>7} {r['first_step_loss']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
