"""What a run logs as it goes: steps.jsonl (per-step losses and lr, written in batches), the
epoch and probe lines on the terminal, the per-epoch table at the end, and TensorBoard scalars.

TensorBoard (`train.tensorboard=true`, the `tensorboard` extra) is written by rank 0 in
RUN/tensorboard/ at the points where steps.jsonl and epochs.jsonl are written, from values
already on the host: logging adds no device syncs to the training loop. Tags: `train_loss/<task>`
and `lr` per step, `dev/<metric>` per evaluated epoch, at the step of its end.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
import torch

from minbert import distributed
from minbert.config import ConfigError

class StepLog:
    """Per-step losses (and, with train.max_grad_norm, gradient norms), kept on the device and
    written in batches (one host sync per flush, not per step). A flush stops the run at the
    first non-finite loss (or gradient norm) and adds the losses to the epoch's sums in `progress`."""

    def __init__(self, run):
        """`run`: the training.state.Run it logs for (its progress, directory, TensorBoard log)."""
        self.run, self.progress = run, run.progress
        self.path = run.out_dir / "steps.jsonl" if run.main else None
        self.pending: list[tuple[int, str, torch.Tensor, float]] = []
        self.norms: dict[int, torch.Tensor] = {}  # step -> the gradients' total norm before clipping

    def add(self, step: int, task: str, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor | None = None) -> None:
        self.pending.append((step, task, loss, lr))
        if grad_norm is not None:
            self.norms[step] = grad_norm

    def flush(self) -> None:
        if not self.pending:
            return
        # Each rank's loss is weighted by its share of the batch: their mean is the batch's loss.
        values = distributed.mean_over_ranks(torch.stack([p[2].float() for p in self.pending]))
        norms: dict[int, float] = {}
        if self.norms:  # the same on every rank (taken after the all-reduce): read with the losses
            both = torch.cat([values, torch.stack([n.float().to(values.device) for n in self.norms.values()])]).tolist()
            values, norms = both[: len(self.pending)], dict(zip(self.norms, both[len(self.pending) :]))
        else:
            values = values.tolist()
        for (step, task, _, _), v in zip(self.pending, values):
            if not math.isfinite(v):
                raise self.run.diverged(f"the {task} loss at step {step} is {v}")
            if not math.isfinite(norms.get(step, 0.0)):
                raise self.run.diverged(f"the gradient norm at step {step} ({task}) is {norms[step]}")
        lines = []
        for (step, task, _, lr), v in zip(self.pending, values):
            self.progress.loss_sums[task] = self.progress.loss_sums.get(task, 0.0) + v
            self.progress.loss_counts[task] = self.progress.loss_counts.get(task, 0) + 1
            line = {"step": step, "task": task, "loss": round(v, 5), "lr": lr}
            if step in norms:
                line["grad_norm"] = round(norms[step], 5)
            lines.append(json.dumps(line) + "\n")
        if self.path is not None:
            with self.path.open("a") as f:
                f.write("".join(lines))
        if self.run.tensorboard is not None:
            self.run.tensorboard.steps([(step, task, v, lr) for (step, task, _, lr), v in zip(self.pending, values)])
        self.pending.clear()
        self.norms.clear()


def append_record(path: Path, record: dict) -> None:
    """One JSON line at the end of a log (epochs.jsonl, evals.jsonl)."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def print_epoch(record: dict) -> None:
    dev = record.get("dev", {})
    losses = " ".join(f"{t}={v:.3f}" for t, v in record["train_loss"].items())
    cols = " ".join(f"{k} {v:.3f}" for k, v in dev.items())
    mark = " *best" if record.get("best") else ""
    print(f"[{record['phase']} epoch {record['epoch']}] loss {losses} | dev {cols}{mark} | {record['elapsed_s']}s", flush=True)


def print_history(epochs_file: Path) -> None:
    """The per-epoch dev scores as a short table."""
    if not epochs_file.exists():
        return
    records = [json.loads(line) for line in epochs_file.read_text().splitlines()]
    names = next((list(r["dev"]) for r in records if r.get("dev")), ["overall"])
    widths = {k: max(9, len(k) + 2) for k in names}
    print(f"{'phase':<20}{'epoch':>6}" + "".join(f"{k:>{widths[k]}}" for k in names))
    for r in records:
        cols = "".join(f"{r['dev'][k]:>{widths[k]}.3f}" for k in names) if r.get("dev") else ""
        print(f"{r['phase']:<20}{r['epoch']:>6}{cols}{'  *' if r.get('best') else ''}")


DIRECTORY = "tensorboard"


class TensorBoardLog:
    def __init__(self, out_dir: Path, done_steps: int):
        """`done_steps`: the steps of the run so far (0, or those of the checkpoint resumed from)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard=true needs the tensorboard package "
                              "(pip install 'minbert[tensorboard]')") from None
        # purge_step: TensorBoard hides what earlier processes logged from this step on (a
        # resumed run repeats the steps after its checkpoint; a fresh one starts at step 1).
        self.writer = SummaryWriter(str(Path(out_dir) / DIRECTORY), purge_step=done_steps + 1)

    def steps(self, rows: list[tuple[int, str, float, float]]) -> None:
        """(step, task, loss, lr) rows, as written to steps.jsonl."""
        for step, task, loss, lr in rows:
            self.writer.add_scalar(f"train_loss/{task}", loss, step)
            self.writer.add_scalar("lr", lr, step)
        self.writer.flush()

    def epoch(self, record: dict) -> None:
        """An epochs.jsonl record: its dev scores, if it has them."""
        for key, value in record.get("dev", {}).items():
            self.writer.add_scalar(f"dev/{key}", value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
