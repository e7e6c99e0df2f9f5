"""Shared pieces of the minbert-vs-reference benchmarks: options, the minbert side's setup,
timing (with a device sync), the matmul peak and FLOP accounting.

Not a script; train_throughput.py and predict_throughput.py import it (run them from the
repository root or anywhere: Python puts this folder on sys.path).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import torch

from minbert import distributed
from minbert.config import RunConfig, load_config
from minbert.configs import resolve_config
from minbert.tasks.data import resolve_data_dir
from minbert.model import BertConfig, flops_per_token
from minbert.multitask import MultitaskBert
from minbert.tokenizer import WordPieceTokenizer
from minbert.runs import build_model

TASK_ORDER = ("sst", "para", "sts")  # round-robin order, as minbert's round_robin sampler


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="data directory (default: ../shared/data, found)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: bf16 autocast on both sides")
    parser.add_argument("--random-init-base", action="store_true",
                        help="random-initialised bert-base-sized encoder on both sides instead of the checkpoint")
    parser.add_argument("--only", choices=["minbert", "reference"], default=None, help="run one side only")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="both sides' (minbert's train.precision, the reference's autocast); auto: bf16 where "
                        "the device has native bf16 (CUDA, AMX, AVX512-BF16), else fp32")
    parser.add_argument("--as-configured", action="store_true",
                        help="minbert with minbert/configs/main.yaml's model section as it is, not the reference's model")


# The reference's model: pooler output, each pair side encoded on its own, the seed report's heads.
MATCHED_MODEL = ["model.pooling=cls", "model.pair_encoding=siamese", "model.sentiment_head=mlp",
                 "model.similarity_head=pair"]  # fmt: skip


def load_run_config(data_dir: str | None, as_configured: bool = False, precision: str = "auto") -> RunConfig:
    """minbert/configs/main.yaml (the main training job's recipe: batch size, optimizer) with
    the data directory resolved and train.precision `precision`; unless `as_configured`, its
    model section set to the reference's model, so that both sides compute the same function."""
    cfg = load_config(resolve_config("main"), [] if as_configured else MATCHED_MODEL)
    cfg.data.dir = str(resolve_data_dir(data_dir))
    cfg.train.precision = precision
    return cfg


def describe_model(cfg: RunConfig, random_init_base: bool) -> str:
    m = cfg.model
    encoder = "random bert-base" if random_init_base else "embedded checkpoint"
    heads = f"{m.sentiment_head} sentiment head"
    if m.pair_encoding == "siamese":
        heads += f", {m.similarity_head} similarity head"
    return f"{encoder}; minbert model: {m.pair_encoding} pairs, {m.pooling} pooling, {heads}"


def build_minbert(cfg: RunConfig, random_init_base: bool) -> tuple[MultitaskBert, WordPieceTokenizer]:
    """minbert's own model builder: the embedded checkpoint, or a random bert-base (BertConfig() defaults)."""
    return build_model(cfg, asdict(BertConfig()) if random_init_base else None)


def autocast(device: str, precision: str = "auto"):
    """The reference's precision, chosen as minbert's train.precision is (`distributed.autocast`:
    "auto" is bf16 autocast where the device has native bf16, fp32 elsewhere)."""
    return distributed.autocast(torch.device(device), precision)


def resolved(device: str, precision: str) -> str:
    """"fp32" or "bf16": what `precision` means on `device` here."""
    return distributed.resolve_precision(torch.device(device), precision)[0]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Stopwatch:
    """Sums the wall time of the `with watch:` blocks, synchronising the device at both ends."""

    def __init__(self, device: str):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> "Stopwatch":
        sync(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._start


class MatmulPeak:
    """FLOP/s of one large square matmul at the current thread count, best of all samples, in the
    dtype the encoder's matmuls run in (`precision`: fp32, or bf16 under autocast): 2048^2 on the
    CPU, 8192^2 on CUDA. Sampled between training steps, so that it sees the same background load
    as they do."""

    def __init__(self, device: str, precision: str = "auto"):
        dtype = torch.bfloat16 if resolved(device, precision) == "bf16" else torch.float32
        self.n, self.dtype = (8192 if device == "cuda" else 2048), dtype
        self.device, self.samples, self.best = device, 0, float("inf")
        self.a, self.b = (torch.randn(self.n, self.n, device=device, dtype=self.dtype) for _ in range(2))
        torch.matmul(self.a, self.b)  # first call: allocation, kernel selection

    def sample(self, reps: int = 1) -> None:
        for _ in range(reps):
            with Stopwatch(self.device) as w:
                torch.matmul(self.a, self.b)
            self.best, self.samples = min(self.best, w.seconds), self.samples + 1

    @property
    def flops(self) -> float:
        return 2 * self.n**3 / self.best

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.flops / 1e9:.1f} GFLOP/s ({dtype} {self.n}x{self.n} matmul, best of {self.samples})"


class TokenStats:
    """Tokens and forward FLOPs of the encoder forwards of a run, from their attention masks.

    model FLOPs: each sequence at its own (non-pad) length L: L * flops_per_token(config, L);
    hardware FLOPs: what a padded (N, T) batch computes: N * T * flops_per_token(config, T).
    flops_per_token counts matmuls only (encoder + pooler); the task heads are left out.
    `config` may be minbert's or transformers' BertConfig (same field names).
    """

    def __init__(self, config):
        self.config = config
        self.real_tokens = self.padded_tokens = 0
        self.model_flops = self.hardware_flops = 0.0

    def add(self, attention_mask: torch.Tensor) -> None:
        N, T = attention_mask.shape
        lengths = attention_mask.sum(1).tolist()
        self.real_tokens += sum(lengths)
        self.padded_tokens += N * T
        self.model_flops += sum(L * flops_per_token(self.config, L) for L in lengths)
        self.hardware_flops += N * T * flops_per_token(self.config, T)

    @property
    def pad_fraction(self) -> float:
        return 1.0 - self.real_tokens / max(1, self.padded_tokens)


def describe(device: str, precision: str = "auto") -> str:
    mode = "bf16 autocast" if resolved(device, precision) == "bf16" else "fp32"
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()}), {mode}"
    return f"cpu ({cpu_name()}), {mode}, {torch.get_num_threads()} torch threads"


def cpu_name() -> str:
    """The CPU's model name and its bf16 flags, as lscpu would show them."""
    name, flags = "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}; {' '.join(shown) or 'no AVX flags'}"
