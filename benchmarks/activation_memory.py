"""Peak memory and step time of a bert-base-sized training step, with and without activation
checkpointing (`model.gradient_checkpointing`, minbert/model.py's Encoder), on the CPU.

    python benchmarks/activation_memory.py [--batch 32] [--seq 128] [--steps 2] [--repeats 1]

The model is minbert's BertModel at bert-base's sizes (12 layers, hidden 768, 12 heads, FFN
3072, vocab 30522; random init, seeded), in training mode (dropout 0.1), with a 5-class linear
head on the pooled [CLS] vector. A step is: gradients set to None, forward of one batch of
random token ids (batch x seq, no padding; the attention mask given), cross-entropy, backward,
an AdamW step (torch's fused CPU kernel, as training uses). Each side runs in its own
subprocess, so neither inherits the other's heap; with --repeats N the sides alternate
(off, on, off, on, ...).

What the memory numbers are (Linux, from /proc/self/status; the high-water mark VmHWM is reset
before each step by writing 5 to /proc/self/clear_refs):
- `before`: resident memory after the model, the optimizer (no state yet) and the batch are
  made, before the first step: weights (440 MB at fp32), torch's libraries, the interpreter.
- `fwd peak`: the highest resident memory during the forward of a step, minus the resident
  memory at that step's start. It is what the forward keeps for the backward (the activations)
  plus the forward's transient buffers: the part checkpointing cuts. In the first step nothing
  else is allocated (no gradients, no optimizer state yet): the cleanest number. At the start
  of a later step the previous gradients (440 MB) still exist and are freed by zero_grad inside
  the step, so its forward peak reads about 440 MB lower.
- `step peak`: the same over the whole step (forward, backward, AdamW): activations, gradients
  (440 MB), the backward's buffers, the optimizer's temporaries, and in the first step the AdamW
  moments it creates (2 x 440 MB); a later step starts with them.
- `peak RSS`: the process's resident high-water mark over its last step, everything included.
Resident memory counts pages touched, not tensors alive: before each step glibc is asked to
return its free pages (malloc_trim), but inside a step it may keep freed pages and reuse them,
so a peak is an upper bound on the tensors alive at that moment (to within glibc's free lists). The
time is each step's wall time; the first step includes one-time work (allocating the
gradients and the optimizer state, warming kernels), so the comparison uses the last.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 2**20


def status_kb(field: str) -> int:
    """A `field:  N kB` line of /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def reset_peak() -> None:
    """Hand glibc's free heap pages back (malloc_trim), so the resident size is what is in use,
    then reset VmHWM to it (Linux 4.0 and later)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def child(checkpointing: bool, batch: int, seq: int, steps: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    from minbert.model import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig()  # bert-base-uncased's sizes
    bert = BertModel(config).train()
    bert.encoder.gradient_checkpointing = checkpointing
    head = torch.nn.Linear(config.hidden_size, 5)
    params = list(bert.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    ids = torch.randint(1000, config.vocab_size, (batch, seq))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 5, (batch,))
    reset_peak()
    before_kb = status_kb("VmRSS")
    records = []
    for _ in range(steps):
        reset_peak()
        start_kb = status_kb("VmRSS")
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        _, pooled = bert(ids, mask)
        loss = F.cross_entropy(head(pooled), labels)
        fwd_kb = status_kb("VmHWM")
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - t0
        records.append({"seconds": seconds, "start_mb": start_kb / 1024, "fwd_peak_mb": (fwd_kb - start_kb) / 1024,
                        "step_peak_mb": (status_kb("VmHWM") - start_kb) / 1024, "peak_rss_mb": status_kb("VmHWM") / 1024,
                        "loss": float(loss)})  # fmt: skip
    return {"checkpointing": checkpointing, "before_mb": before_kb / 1024, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "steps": records,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def run_side(checkpointing: bool, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", "--checkpointing", str(int(checkpointing)),
               "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps), "--seed", str(args.seed)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"the {'checkpointing' if checkpointing else 'plain'} side failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="steps per side (the last is compared)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two sides this many times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write every record here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(bool(args.checkpointing), args.batch, args.seq, args.steps, args.seed)))
        return
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("this benchmark reads Linux's /proc/self/status and resets its peak with /proc/self/clear_refs")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[0]}", flush=True)
    results = []
    for r in range(args.repeats):
        for checkpointing in (False, True):
            res = run_side(checkpointing, args)
            results.append(res)
            last = res["steps"][-1]
            print(f"repeat {r}: checkpointing {'on ' if checkpointing else 'off'}  before {res['before_mb']:7.0f} MB  "
                  f"fwd peak {last['fwd_peak_mb']:7.0f} MB  step peak {last['step_peak_mb']:7.0f} MB  "
                  f"peak RSS {last['peak_rss_mb']:7.0f} MB  step s {[round(s['seconds'], 1) for s in res['steps']]}  "
                  f"loss {last['loss']:.4f}  threads {res['threads']}", flush=True)  # fmt: skip
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[0]}")
    firsts = [(results[i]["steps"][0], results[i + 1]["steps"][0]) for i in range(0, len(results), 2)]
    print("first step, fwd peak off / on (MB): " + ", ".join(f"{off['fwd_peak_mb']:.0f} / {on['fwd_peak_mb']:.0f}"
                                                               for off, on in firsts))  # fmt: skip
    pairs = [(results[i]["steps"][-1], results[i + 1]["steps"][-1]) for i in range(0, len(results), 2)]
    for key in ("fwd_peak_mb", "step_peak_mb", "peak_rss_mb", "seconds"):
        ratios = [on[key] / off[key] for off, on in pairs]
        print(f"on / off, {key}: {', '.join(f'{x:.3f}' for x in ratios)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
