"""The files a run writes that others read: the checkpoint format (what a checkpoint holds, how
it is written and read) and atomic writes. Training writes them, inference and ensembles read
them, so they live below both (minbert/training/run_state.py holds what only training needs:
the lock, the checkpoint timer, RNG states, cutting logs back on resume).

A checkpoint is one safetensors file. Tensors (model weights, optimizer moments, RNG states)
are its tensors; everything else (the run config, the BERT config, counters, optimizer and
schedule hyper-parameters, Python's RNG state) is JSON in its header's metadata. Reading one
parses a JSON header and copies bytes, so no checkpoint, however crafted, can run code (a
pickle can: minbert never unpickles a run checkpoint).

- `best.safetensors`: the weights with the best dev score, their config and dev scores.
- `last.safetensors`: the same fields plus `progress` (counters), optimizer, schedule and RNG
  states: everything needed to continue the run exactly where it stopped.

Both carry `data`: the fingerprints of the data files the run read (tasks/data.py's
`fingerprint`); a checkpoint written before they were recorded reads back with `data=None`.

Files are written to a fresh temporary name beside the target, flushed to disk, then renamed
over it: a crash or a full disk leaves the previous file whole. `RunLock` keeps two
processes from writing one run directory (training/run_state.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from minbert.checkpoint import CheckpointError

FORMAT = "minbert-checkpoint"
VERSION = "1"
BEST, LAST = "best.safetensors", "last.safetensors"


_UMASK = os.umask(0)
os.umask(_UMASK)


class RunError(RuntimeError):
    """A run that cannot go on: diverged, its directory locked or not writable."""


# ---------------------------------------------------------------------------------------
# What a run checkpoint holds


@dataclass
class Progress:
    """The counters of a run: where it is, what it has logged. JSON in last.safetensors."""

    phase: int = 0  # index of the phase in progress (== number of phases when all are done)
    epoch: int = 0  # completed epochs of that phase
    step_in_epoch: int = 0  # completed steps of the epoch in progress
    step: int = 0  # optimizer steps of the whole run
    best: float | None = None  # best dev overall so far
    best_probe: float | None = None  # best overall of the in-epoch probes so far (eval_every_steps)
    history: list[dict] = field(default_factory=list)  # the epochs.jsonl records
    streams: dict[str, dict] = field(default_factory=dict)  # each task's place in its data
    loss_sums: dict[str, float] = field(default_factory=dict)  # the epoch in progress, per task
    loss_counts: dict[str, int] = field(default_factory=dict)
    log_bytes: dict[str, int] = field(default_factory=dict)  # size of each log when saved
    elapsed_s: float = 0.0  # training time before the current process
    probe_due: bool = False  # stopped (by a signal) in the probe after `step`: a resumed run probes first
    # train.early_stopping: dev evaluations in a row without an improvement beyond min_delta, and
    # once they reach the patience, why and where training stopped (the run then only finishes).
    evals_without_improvement: int = 0
    stopped_early: dict | None = None

    def start_epoch(self) -> None:
        self.step_in_epoch, self.loss_sums, self.loss_counts = 0, {}, {}


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    config: dict  # the resolved RunConfig as a dict
    bert_config: dict
    dev: dict[str, float] | None = None  # dev scores of these weights
    # Resumable checkpoints (last.safetensors) only:
    progress: Progress | None = None
    optimizer: dict | None = None  # torch optimizer state_dict
    scheduler: dict | None = None  # torch LR scheduler state_dict
    rng: dict | None = None  # see rng_state()
    mlm_head: dict[str, torch.Tensor] | None = None
    data: dict[str, dict] | None = None  # the data files' fingerprints; None in older checkpoints


# ---------------------------------------------------------------------------------------
# Writing


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a fresh temporary file beside `path`, fsync, rename over `path`.

    On any failure (a full disk, a crash) the temporary file is removed and `path` keeps its
    previous content; the error names the file."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make run files private
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        raise RunError(f"{path}: could not write ({e.strerror or e}); {kept}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> None:
    from safetensors.torch import save

    tensors = {f"model.{k}": v for k, v in ckpt.model.items()}
    meta = {"config": ckpt.config, "bert_config": ckpt.bert_config, "dev": ckpt.dev}
    if ckpt.data is not None:
        meta["data"] = ckpt.data
    if ckpt.progress is not None:
        meta["progress"] = dataclasses.asdict(ckpt.progress)
        meta["scheduler"] = ckpt.scheduler
        opt_tensors, meta["optimizer"] = _split_optimizer(ckpt.optimizer)
        rng_tensors, meta["rng"] = _split_rng(ckpt.rng)
        tensors |= opt_tensors | rng_tensors
        tensors |= {f"mlm_head.{k}": v for k, v in (ckpt.mlm_head or {}).items()}
        meta["mlm_head"] = ckpt.mlm_head is not None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # allow_nan=False: a diverged value is refused here rather than written as a non-JSON token
    metadata = {"format": FORMAT, "version": VERSION} | {k: json.dumps(v, allow_nan=False) for k, v in meta.items()}
    data = save(tensors, metadata=metadata)  # bytes: written by Python, so a full disk is an OSError
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _split_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimizer state_dict as tensors + JSON (per-parameter state keyed by index)."""
    tensors, per_param = {}, {}
    for idx, entry in sd["state"].items():
        per_param[str(idx)] = {k: v for k, v in entry.items() if not torch.is_tensor(v)}
        tensors |= {f"optimizer.{idx}.{k}": v for k, v in entry.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"], "state": per_param}


def _split_rng(s: dict) -> tuple[dict[str, torch.Tensor], dict]:
    version, mt, gauss = s["python"]
    kind, keys, pos, has_gauss, cached = s["numpy"]
    tensors = {"rng.torch": s["torch"], "rng.numpy": torch.from_numpy(keys.astype(np.int64))}
    tensors |= {f"rng.cuda.{i}": t for i, t in enumerate(s["cuda"])}
    return tensors, {"python": [version, list(mt), gauss], "numpy": [kind, pos, has_gauss, cached], "cuda": len(s["cuda"])}


# ---------------------------------------------------------------------------------------
# Reading: every field checked, every failure one line naming the file


def resolve_checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best.safetensors)."""
    path = Path(path)
    if path.is_dir():
        if (path / BEST).is_file():
            return path / BEST
        raise CheckpointError(f"{path}: a directory without {BEST}; pass a run directory or a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint written by save_checkpoint (or a run directory's best)."""
    from safetensors import safe_open

    path = resolve_checkpoint_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types, and OSError
        raise CheckpointError(f"{path}: not a minbert checkpoint: {_why_unreadable(path, e)}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file but not a minbert checkpoint (no 'format: {FORMAT}' in its header)")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r}; this minbert reads {VERSION!r}")
    fields = {}
    for key in ("config", "bert_config", "dev", "progress", "optimizer", "scheduler", "rng", "mlm_head", "data"):
        try:
            fields[key] = json.loads(meta[key]) if key in meta else None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: header field {key!r} is not valid JSON ({e})") from None
    try:
        return _assemble(tensors, fields)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint header ({type(e).__name__}: {e})") from None


def _why_unreadable(path: Path, error: Exception) -> str:
    head = path.read_bytes()[:9] if path.is_file() else b""
    if path.is_file() and path.stat().st_size == 0:
        return "the file is empty"
    # A safetensors file opens with its header's length (8 bytes, little-endian: the first may
    # be 0x80, as a pickle's is) and then the header's "{": that is no pickle, if cut short.
    safetensors = head[8:9] == b"{"
    if not safetensors and (head[:1] == b"\x80" or head[:2] == b"PK"):
        return ("it is a pickle (an old minbert .pt, or a crafted file); minbert never unpickles checkpoints, "
                "since unpickling can run code")  # fmt: skip
    return f"not a safetensors file, or a truncated one ({error})"


def _assemble(tensors: dict[str, torch.Tensor], f: dict) -> Checkpoint:
    def prefixed(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    if not isinstance(f["config"], dict) or not isinstance(f["bert_config"], dict):
        raise ValueError("config and bert_config must be JSON objects")
    ckpt = Checkpoint(prefixed("model."), f["config"], f["bert_config"], f["dev"])
    if not ckpt.model:
        raise ValueError("no model weights")
    if f["data"] is not None:
        ckpt.data = checked_fingerprints(f["data"], "header field 'data'")
    if f["progress"] is None:
        return ckpt
    ckpt.progress = Progress(**f["progress"])
    ckpt.scheduler = f["scheduler"]
    opt = prefixed("optimizer.")
    state = {int(i): dict(entry) for i, entry in f["optimizer"]["state"].items()}
    for key, t in opt.items():
        idx, name = key.split(".", 1)
        state[int(idx)][name] = t
    ckpt.optimizer = {"state": state, "param_groups": f["optimizer"]["param_groups"]}
    r = f["rng"]
    version, mt, gauss = r["python"]
    kind, pos, has_gauss, cached = r["numpy"]
    ckpt.rng = {"python": (version, tuple(mt), gauss),
                "numpy": (kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached),
                "torch": tensors["rng.torch"], "cuda": [tensors[f"rng.cuda.{i}"] for i in range(r["cuda"])]}  # fmt: skip
    ckpt.mlm_head = prefixed("mlm_head.") if f["mlm_head"] else None
    return ckpt


def checked_fingerprints(value, where: str) -> dict[str, dict]:
    """`value` (read back from JSON) if it is a set of data fingerprints (tasks/data.py's
    `fingerprint` of each file); else a ValueError naming `where`."""
    fields = {"bytes": int, "lines": int, "sha256": str}
    good = isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, dict) and all(isinstance(v.get(f), t) for f, t in fields.items())
        for k, v in value.items())  # fmt: skip
    if not good:
        raise ValueError(f"{where}: not a set of data fingerprints ({{file: {{bytes, lines, sha256}}}})")
    return value


def checkpoint_data(path: str | Path) -> dict[str, dict] | None:
    """The data fingerprints of a checkpoint (None: written before they were recorded), read
    from its header alone; a file that is not a readable checkpoint fails as in load_checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(resolve_checkpoint_file(path)), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError("not a minbert checkpoint of this version")
        return checked_fingerprints(json.loads(meta["data"]), "data") if "data" in meta else None
    except Exception:  # noqa: BLE001  unreadable or damaged: load_checkpoint names the fault, as always
        return load_checkpoint(path).data
