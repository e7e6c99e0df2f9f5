"""Several processes (torchrun) through torch's DistributedDataParallel, and device settings.

Every rank builds the same task schedule and the same global batches from the same seed, so
all ranks draw the same task at every step; each rank trains on its slice of the global
batch, its loss weighted so that DDP's average of the gradients is the gradient of the whole
batch (`local_share`). Only rank 0 writes files. Evaluation splits the examples across ranks
and gathers the predictions, so every rank sees the same scores. Every rank also seeds torch
alike, so ranks whose slices have the same shape draw the same dropout masks: the gradient's
expectation is that of one process, its dropout noise less varied.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300.0  # train.ddp_timeout_s's default
# oneDNN runs the CPU's bf16 matmuls and keeps a compiled kernel per matmul shape, 1,024 of them by
# default. A run's batches come in about a hundred lengths, each with a dozen matmul shapes forward
# and backward: in bf16 the full cache held about 700 MB more than 128 entries do (the main job's
# model, 450 steps: peak RSS 3.07 GB, 2.55 GB at 128; docs/RESULTS.md). Read by oneDNN at its first
# use, so it is set here, before any matmul; a value the user set is kept.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
_control: dict[str, object] = {}  # the CPU (gloo) group for small host-side collectives, and the timeout


def init(timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun. `timeout_s`: how
    long a collective waits for a rank before it fails (gloo's default is 30 minutes: a lost rank
    would hold the others that long)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend, timeout=timeout)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Host-side agreement (the stop flag) goes through gloo on CPU tensors: no device sync.
        _control["group"] = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
        _control["timeout_s"] = timeout_s
    return rank(), world_size()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def local_share(indices: list[int]) -> tuple[list[int], float]:
    """This rank's part of a global batch, and the weight its mean loss takes before backward.

    DDP averages the ranks' gradients with equal weights, but a batch of B examples does not
    always split evenly (the last batch of a pass, or B not a multiple of the world size W):
    rank r gets n_r examples. Its loss is the mean over those n_r, so weighting it by
    n_r W / B makes DDP's average (1/W) sum_r (n_r W / B) mean_r equal (1/B) sum over all B
    examples: the one-process loss of the whole batch. Equal slices (and one process) get 1.

    Exact for losses that are means of per-example terms (cross-entropy, BCE, MSE). CoSENT
    (`train.sts_loss=cosent` or `mse+cosent`) is a ranking loss over every pair of the batch and
    does not split: under DDP each rank ranks only the pairs inside its own slice, a smaller
    batch's loss than one process computes (as in-batch losses without a gather are anywhere).

    A rank whose slice would be empty (a batch smaller than W) must still run forward and
    backward, or DDP's gradient all-reduce waits for it forever: it takes the batch's first
    example with weight 0.
    """
    world = world_size()
    mine = indices[rank() :: world]
    if not mine:
        return indices[:1], 0.0
    return mine, len(mine) * world / len(indices)


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over all ranks (a collective: every rank must call it at the same point)."""
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t /= world_size()
    return t


def max_over_ranks(value: int) -> int:
    """The largest of every rank's `value` (a collective, on the CPU; `value` itself alone)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control.get("group"))
    return int(t.numpy()[0])


def lost_ranks(wait_s: float | None = None) -> list[int] | None:
    """After a collective failed: the ranks that do not answer a roll call on the process group's
    store within `wait_s` (each rank that gets here says it is alive, then waits for the others).
    None when it cannot tell: no MASTER_ADDR/MASTER_PORT, or the store itself is gone, which
    means that rank 0 (whose process holds it, outside torchrun) is lost."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (addr and port):
        return None
    me, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    wait_s = wait_s or min(10.0, _control.get("timeout_s", DEFAULT_TIMEOUT_S))
    try:
        store = dist.TCPStore(addr, int(port), is_master=False, timeout=datetime.timedelta(seconds=wait_s))
        store.set(f"minbert/alive/{me}", "1")
        deadline = time.monotonic() + wait_s
        missing = [r for r in range(world) if r != me]
        while missing and time.monotonic() < deadline:
            missing = [r for r in missing if not store.check([f"minbert/alive/{r}"])]
            time.sleep(0.2)
        return missing
    except (RuntimeError, OSError):  # the store does not answer
        return [0] if me != 0 else None


def gather_predictions(mine: dict[int, float], n: int) -> list:
    """Merge {index: prediction} from every rank into one list in index order."""
    if dist.is_initialized():
        parts: list = [None] * world_size()
        dist.all_gather_object(parts, mine)
        mine = {i: p for part in parts for i, p in part.items()}
    return [mine[i] for i in range(n)]


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


PRECISIONS = ("auto", "fp32", "bf16")  # train.precision's choices; "auto" is resolved at start
# What "auto" means, where set ("fp32" or "bf16"), instead of the device's own answer: fp32 results
# that hold on every machine (the test suite sets it to fp32, bf16 tests ask for bf16 themselves).
AUTO_PRECISION_ENV = "MINBERT_AUTO_PRECISION"


def native_bf16(device: torch.device) -> str | None:
    """What gives `device` native bf16 matmuls (a few words for the start line), or None.

    Decided by the CPU's capability flags rather than by timing a matmul at start: a timing
    taken while another process shares the cores could choose either way, the flags cannot.
    Measured (docs/RESULTS.md, benchmarks/matmul_precision.py): the encoder's matmuls run 8.3x
    faster in bf16 than in fp32 with AMX (Intel Xeon), 4.4-6.8x with AVX512-BF16 (AMD EPYC); with
    oneDNN kept from those instructions bf16 is emulated: 0.20x fp32 on AVX-512, 0.01x on AVX2."""
    if device.type == "cuda":
        return "CUDA" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    if _cpu_flag("amx_bf16", "_is_amx_tile_supported"):
        return "the CPU has AMX"
    if _cpu_flag("avx512_bf16", "_is_avx512_bf16_supported"):
        return "the CPU has AVX512-BF16"
    return None


def _cpu_flag(flag: str, torch_check: str) -> bool:
    """torch's own check of a CPU feature (it also asks the OS to allow AMX), else /proc/cpuinfo."""
    check = getattr(torch.cpu, torch_check, None)
    if check is not None:
        return bool(check())
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def resolve_precision(device: torch.device, precision: str) -> tuple[str, str]:
    """("fp32" or "bf16", why): "auto" becomes bf16 autocast where `device` has native bf16
    (`native_bf16`), fp32 elsewhere, or what MINBERT_AUTO_PRECISION says where it is set;
    "fp32" and "bf16" stay as asked."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision != "auto":
        return precision, "as configured"
    forced = os.environ.get(AUTO_PRECISION_ENV)
    if forced:
        if forced not in ("fp32", "bf16"):
            raise ValueError(f"{AUTO_PRECISION_ENV}={forced!r}: expected fp32 or bf16")
        return forced, f"{AUTO_PRECISION_ENV}={forced}"
    native = native_bf16(torch.device(device))
    return ("bf16", native) if native else ("fp32", f"no native bf16 on this {torch.device(device).type.upper()}")


def autocast(device: torch.device, precision: str):
    """bf16 autocast where `precision` resolves to bf16 ("bf16", or "auto" where native:
    `resolve_precision`); fp32 otherwise.

    Under CPU autocast only the matmuls (linear, matmul, bmm) run in bf16; their fp32 weights are
    cast once per autocast region, and weights, gradients and optimizer state stay fp32. The
    residual stream stays fp32 too (the embeddings are fp32, and fp32 + bf16 is fp32), so every
    LayerNorm normalises fp32; the losses are fp32 (heads' outputs are cast with `.float()`,
    and cross-entropy / MSE are on autocast's fp32 list). The written-out attention's softmax
    takes bf16 scores and computes in fp32 inside the kernel, as flash attention does on a GPU."""
    device = torch.device(device)
    if resolve_precision(device, precision)[0] != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
