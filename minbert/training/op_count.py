"""What a piece of training code asks of the device, counted at torch's dispatcher: `OpCount`.

Every ATen operator call is counted (on a GPU each is a kernel launch, or a few), and two kinds
are singled out because they make the host wait for the device:
- syncs: `aten._local_scalar_dense`, which `.item()`, `float(t)`, `bool(t)` and `if t:` call
  to read one value back;
- device-to-host copies: an operator that reads a tensor on a device and writes one on the CPU
  (`.cpu()`, `.to("cpu")`, `.tolist()` of a device tensor).
A training step between two logging points should have neither (tests/training/test_step_sync.py);
benchmarks/step_overhead.py reports the counts per step.
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

SYNC = torch.ops.aten._local_scalar_dense.default


def _devices(values) -> set[str]:
    return {t.device.type for t in tree_leaves(values) if isinstance(t, torch.Tensor)}


class OpCount(TorchDispatchMode):
    """`with OpCount() as count:` counts the ATen operators run inside (`ops`, by overload), the
    syncs and the device-to-host copies; `sites` names the line of our code behind each sync
    and copy (the innermost frame in minbert/, else the innermost outside torch)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs = 0
        self.to_host = 0
        self.sites: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops[str(func)] += 1
        sources = _devices((args, kwargs)) - {"cpu"}
        # copy_ writes into its first argument, other operators into their outputs
        written = _devices(args[0] if func is torch.ops.aten.copy_.default else out)
        if func is SYNC:
            self.syncs += 1
            self.sites[f"sync {_call_site()}"] += 1
        elif sources and "cpu" in written:
            self.to_host += 1
            self.sites[f"to host {_call_site()}"] += 1
        return out

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _call_site() -> str:
    """file:line of the code that asked, for a report: the innermost minbert frame, else the
    innermost frame outside torch."""
    frames = traceback.extract_stack()[:-3]  # less _call_site and __torch_dispatch__
    ours = [f for f in frames if "/minbert/" in f.filename and not f.filename.endswith("op_count.py")]
    outside = [f for f in frames if "/torch/" not in f.filename]
    frame = (ours or outside or frames)[-1]
    return f"{frame.filename}:{frame.lineno} ({frame.line})"
