"""The encoder's matmul shapes in fp32 and bf16 on this CPU: GFLOP/s of each, and the ratio.

What `train.precision: auto` rests on (minbert.distributed.native_bf16): bf16 pays where the CPU
has AMX or AVX512-BF16, and is emulated, far slower than fp32, where it has neither. To see the
second case on a CPU that has them, cap oneDNN's instruction set, which is what runs torch's CPU
bf16 matmuls (fp32 ones go to MKL and are not affected):
    python benchmarks/matmul_precision.py [--threads 1] [--reps 20]
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/matmul_precision.py   # AVX-512, no bf16 instructions
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/matmul_precision.py          # an AVX2-only CPU's kernels
The shapes: 2,048 tokens (64 rows of 32) through MiniLM's projections (384 -> 384), its
feed-forward in (384 -> 1536) and out (1536 -> 384). Last line `ratio: X`, bf16 over fp32 summed
over the shapes.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from common import cpu_name

SHAPES = [(2048, 384, 384), (2048, 384, 1536), (2048, 1536, 384)]


def gflops(n: int, k: int, m: int, dtype: torch.dtype, reps: int) -> float:
    a, b = torch.randn(n, k, dtype=dtype), torch.randn(k, m, dtype=dtype)
    for _ in range(3):  # kernel selection, first-touch of the output
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n * k * m * reps / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_name()}; {args.threads} threads; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}")
    seconds = {"fp32": 0.0, "bf16": 0.0}
    for n, k, m in SHAPES:
        rates = {name: gflops(n, k, m, dtype, args.reps) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        for name, rate in rates.items():
            seconds[name] += 2 * n * k * m / rate
        print(f"{n}x{k} @ {k}x{m}: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s, "
              f"ratio {rates['bf16'] / rates['fp32']:.2f}")  # fmt: skip
    print(f"ratio: {seconds['fp32'] / seconds['bf16']:.2f}")


if __name__ == "__main__":
    main()
