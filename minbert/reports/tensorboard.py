"""TensorBoard scalars of a run (`train.tensorboard=true`, the `tensorboard` extra), in RUN/tensorboard/.

Written by rank 0 at the points where steps.jsonl and epochs.jsonl are written, from values
already on the host: logging adds no device syncs to the training loop. Tags: `train_loss/<task>`
and `lr` per step, `dev/<sst|para|sts|overall>` per evaluated epoch, at the step of its end.
"""

from __future__ import annotations

from pathlib import Path

from minbert.config import ConfigError

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
