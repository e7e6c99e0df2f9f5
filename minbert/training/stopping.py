"""Stopping a run when asked: SIGTERM (what a cluster scheduler or a spot instance sends before it
kills) and SIGINT (Ctrl-C).

The first signal asks the run to stop. The optimizer step in progress runs to its end, and so
does whatever else is `held` (a log flush, a checkpoint, an epoch's bookkeeping); then the
run writes last.safetensors at that step and `train` raises `TrainingStopped` (the CLI says so
in one line, with the `--resume` command, and exits with 128 + the signal's number: 143 for
SIGTERM, 130 for SIGINT). In one process the stop also cuts short a dev evaluation or the final
predictions: nothing they hold is lost, since an interrupted evaluation is redone on resume and
prediction files are written atomically. Under torchrun the ranks agree at each step boundary
(a max over ranks of the signal received), so that they all stop after the same step and rank 0
writes; an evaluation in progress there runs to its end first. A second signal ends the process
at once (the signal's default action); checkpoints are written atomically, so the previous
last.safetensors is whole then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from minbert import distributed

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(BaseException):
    """Raised where a run may stop, after a signal. A BaseException, as KeyboardInterrupt is, so
    that no `except Exception` on the way swallows it."""


class EvalCallbackStop(StopRequested):
    """An `on_eval` callback (TrainOptions) raised `cause` (a sweep's pruning, say): the run
    stops as after a signal (the step finished, the logs flushed, last.safetensors at this step,
    a note in events.jsonl), and `train` raises `cause` again."""

    def __init__(self, cause: Exception):
        super().__init__(cause)
        self.cause = cause


class TrainingStopped(Exception):
    """`train` stopped on a signal: `checkpoint` is last.safetensors, at `step` (None: stopped
    before this process trained; checkpoint None: the run had none yet), `seconds` the time
    from the signal to this exception. `exit_status`: what the CLI exits with."""

    def __init__(self, signum: int, step: int | None, checkpoint: Path | None, seconds: float):
        self.signum, self.step, self.checkpoint, self.seconds = signum, step, checkpoint, seconds
        self.exit_status = 128 + signum
        if checkpoint is None or not checkpoint.exists():
            self.checkpoint, where = None, "no checkpoint had been written yet"
        elif step is None:
            where = f"stopped before this process trained; {checkpoint} is intact"
        else:
            where = f"{checkpoint} holds step {step}"
        super().__init__(f"{signal.Signals(signum).name}: stopped {seconds:.1f} s after the signal; {where}")


class Stopper:
    """While entered (in the main thread): the first SIGTERM or SIGINT asks the run to stop
    (`requested`); a second one ends the process at once. `immediate` (one process): the stop
    is raised as soon as nothing is held; otherwise only at `check_boundary`, where every rank
    calls it at the same step."""

    def __init__(self, immediate: bool):
        self.immediate = immediate
        self.signum: int | None = None
        self.received_at: float | None = None
        self._held = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Stopper":
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame) -> None:
        if self.signum is not None:  # the second signal: its default action, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum, self.received_at = signum, time.monotonic()
        if self.immediate and not self._held:
            raise StopRequested(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def hold(self):
        """A section that runs to its end (a step, a log flush, a checkpoint): a stop asked for
        inside it is raised when it is left (in one process; at the next boundary otherwise)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if self.immediate and not self._held and self.requested:
            raise StopRequested(self.signum)

    def check_boundary(self) -> None:
        """At a step boundary: stop if any rank was asked to (a collective under torchrun: every
        rank calls it after the same steps)."""
        if not self.immediate:
            signum = distributed.max_over_ranks(self.signum or 0)
            if signum and self.signum is None:  # another rank received it
                self.signum, self.received_at = signum, time.monotonic()
        if self.requested:
            raise StopRequested(self.signum)

    def stopped(self, step: int | None, checkpoint: Path | None) -> TrainingStopped:
        return TrainingStopped(self.signum, step, checkpoint, time.monotonic() - self.received_at)
