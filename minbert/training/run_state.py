"""What only a training run needs of its state: RNG states to save and restore, the lock on its
directory, when a mid-epoch checkpoint is due, cutting logs back to a checkpoint on resume, and
the config differences that refuse a resume. The checkpoint format itself is minbert/run_files.py.
"""

from __future__ import annotations

import fcntl
import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from minbert.run_files import RunError


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}  # fmt: skip


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, with both values."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            out += config_differences(dict(enumerate(a)), dict(enumerate(b)), f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return out


# ---------------------------------------------------------------------------------------
# The run directory


class RunLock:
    """An exclusive lock on a run directory: `flock` on DIR/.lock, held while the process
    lives. The kernel drops it when the process ends in any way (kill -9 included), so a
    crashed run never leaves it stuck; the file stays, the lock does not."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunError(f"{self.path.parent}: another minbert run (pid {holder}) is writing this directory; "
                           "wait for it to finish or choose another --out") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def truncate_logs(out_dir: Path, log_bytes: dict[str, int]) -> None:
    """Cut each log back to its size at the checkpoint, so steps after it are not logged twice."""
    for name, size in log_bytes.items():
        path = Path(out_dir) / name
        have = path.stat().st_size if path.exists() else 0
        if have < size:
            raise RunError(f"{path}: {have} bytes, but the checkpoint was taken at {size}; the log was cut or replaced")
        if not path.exists():
            continue
        with path.open("rb+") as f:
            f.truncate(size)


def log_sizes(out_dir: Path, names: tuple[str, ...]) -> dict[str, int]:
    return {n: (Path(out_dir) / n).stat().st_size if (Path(out_dir) / n).exists() else 0 for n in names}


class CheckpointTimer:
    """Says when a mid-epoch checkpoint is due: `every_steps` steps and/or `every_minutes`
    minutes of wall time after the last one (whichever comes first; None turns one off)."""

    def __init__(self, every_steps: int | None, every_minutes: float | None, clock: Callable[[], float] | None = None):
        import time

        self.every_steps, self.every_s = every_steps, (every_minutes * 60 if every_minutes else None)
        self.clock = clock or time.monotonic
        self.reset(0)

    def due(self, step: int) -> bool:
        by_steps = self.every_steps is not None and step - self.last_step >= self.every_steps
        by_time = self.every_s is not None and self.clock() - self.last_time >= self.every_s
        return by_steps or by_time

    def reset(self, step: int) -> None:
        self.last_step, self.last_time = step, self.clock()
