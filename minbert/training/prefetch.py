"""The next step's batch, built (and on a GPU copied from pinned memory) in a worker thread
while the current step runs (`train.prefetch`).

A step's batch depends on the host only: the task the epoch's schedule names, the indices its
stream draws next, the step number (swapped pairs' coins), R-Drop's doubling. The prefetcher
keeps its own copies of the task streams, one step ahead of the run's; the run's streams still
draw every step, so checkpoints record where the run is, not where the prefetcher is. A
prefetched batch is used only when its step, task and indices are the ones the step drew
(otherwise it is built then, as without prefetching): the batches, and so the results, are the
same with and without it.

On CUDA the copy runs on a side stream; the step's stream waits for it on the device (no host
sync) and the tensors are recorded on the step's stream so that their memory is not reused
early. Frozen phases with cached vectors and MLM phases do not prefetch.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from minbert.tasks.encoding import Batch
from minbert.training.state import TaskStream


@dataclass
class _Ahead:
    step: int
    task: str
    indices: list[int]
    batch: Future


class Prefetcher:
    """`take(step, task, indices)` -> the batch built ahead for them, or None; then `ahead(...)`
    starts the next step's. `draw(stream, task)` draws a step's indices from a stream, `build(task,
    indices, step)` makes its batch on the device: the step's own functions."""

    def __init__(self, streams: dict[str, TaskStream], schedule: list[str], start: int,
                 draw: Callable[[TaskStream, str], list[int]], build: Callable[[str, list[int], int], Batch],
                 device: torch.device):  # fmt: skip
        self.streams = {t: TaskStream(t, s.passes, s.position) for t, s in streams.items()}
        self.schedule, self.next_pos = schedule, start
        self.draw, self.build = draw, build
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="minbert-prefetch")
        self.pending: _Ahead | None = None

    def ahead(self, step: int) -> None:
        """Start building the batch of the schedule's next step, which will be step `step`."""
        if self.next_pos >= len(self.schedule):
            return
        task = self.schedule[self.next_pos]
        self.next_pos += 1
        indices = self.draw(self.streams[task], task)
        self.pending = _Ahead(step, task, indices, self.pool.submit(self._build, task, indices, step))

    def _build(self, task: str, indices: list[int], step: int) -> Batch:
        if self.copy_stream is None:
            return self.build(task, indices, step)
        with torch.cuda.stream(self.copy_stream):
            return self.build(task, indices, step)

    def take(self, step: int, task: str, indices: list[int]) -> Batch | None:
        ahead, self.pending = self.pending, None
        if ahead is None or (ahead.step, ahead.task, ahead.indices) != (step, task, indices):
            if ahead is not None:
                ahead.batch.cancel()
            return None
        batch = ahead.batch.result()  # waits for the worker thread, not for the device
        if self.copy_stream is not None:
            current = torch.cuda.current_stream(self.copy_stream.device)
            current.wait_stream(self.copy_stream)
            for t in batch.tensors():
                t.record_stream(current)
        return batch

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
