"""train.prefetch (training/prefetch.py): the next step's batch built in a worker thread gives the
same batches, so the same run, byte for byte, as building it in the step; also across a stop
and a resume mid-epoch, with swapped pairs and R-Drop (the batch depends on the step and doubles);
and a prefetched step is still free of syncs; and packed batches (train.packing) likewise."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from test_run_state import assert_same_run
from test_step_sync import TASKS, ready_run

from minbert.config import load_config
from minbert.tasks.encoding import EncodedTask
from minbert.training import TrainingStopped, TrainOptions, train
from minbert.training import loop
from minbert.training.logs import StepLog
from minbert.training.op_count import OpCount


LEVERS = ["model.pair_encoding=cross", "train.swap_pairs=true", "train.rdrop=0.5", "train.log_every_steps=3",
          "train.bucket_batches=1", "train.phases=[{epochs: 2, lr: 1e-3}, {tasks: [sts], epochs: 1, lr: 1e-3}]"]  # fmt: skip
STOP_AT = 9  # a step inside the first epoch (12 steps of batch 8 over 48 rows, 3 tasks)


def config(tiny_checkpoint, small_data_dir, cache: Path, prefetch: bool, *extra: str):
    return load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={cache}",
        "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1", *LEVERS,
        f"train.prefetch={str(prefetch).lower()}", *extra])  # fmt: skip


def assert_same_files(a: Path, b: Path) -> None:
    assert_same_run(a, b, logs=("metrics.json", "steps.jsonl"))  # config.yaml differs: train.prefetch


@pytest.fixture(scope="module")
def unprefetched(tiny_checkpoint, small_data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "run"
    train(config(tiny_checkpoint, small_data_dir, out.parent / "cache", False), out, TrainOptions(progress=False))
    return out


def test_a_prefetched_run_is_the_same_run(unprefetched, tiny_checkpoint, small_data_dir, monkeypatch, tmp_path):
    built = []
    build = EncodedTask.batch

    def recording(self, *args, **kwargs):
        import threading

        built.append(threading.current_thread().name)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(EncodedTask, "batch", recording)
    out = tmp_path / "run"
    train(config(tiny_checkpoint, small_data_dir, tmp_path / "cache", True), out, TrainOptions(progress=False))
    monkeypatch.undo()
    assert_same_files(unprefetched, out)
    # Training batches came from the worker thread (evaluation batches from the main one).
    assert sum(name.startswith("minbert-prefetch") for name in built) >= 12 * 2 + 6


def test_a_packed_run_is_the_same_run_prefetched(tiny_checkpoint, small_data_dir, monkeypatch, tmp_path):
    """train.packing end to end (the recipe, evaluation, predictions), its packed batches built
    in the step or ahead in the worker thread: the same run."""
    built = []
    build = EncodedTask.batch

    def recording(self, *args, **kwargs):
        batch = build(self, *args, **kwargs)
        built.append(batch.packed is not None)
        return batch

    monkeypatch.setattr(EncodedTask, "batch", recording)
    runs = []
    for prefetch in (False, True):
        runs.append(tmp_path / f"run-{prefetch}")
        train(config(tiny_checkpoint, small_data_dir, tmp_path / "cache", prefetch, "train.packing=true"), runs[-1],
              TrainOptions(progress=False))  # fmt: skip
    monkeypatch.undo()
    assert_same_files(*runs)
    assert sum(built) == 2 * (18 * 2 + 6) and not all(built)  # each run: 2 epochs of 18 steps, 6 of sts; evaluation padded


def test_a_prefetched_run_stopped_mid_epoch_resumes_to_the_same_files(unprefetched, tiny_checkpoint, small_data_dir,
                                                                         monkeypatch, tmp_path):  # fmt: skip
    original = loop.step_loss

    def signalled(run, task, indices, phase, *rest):
        if run.progress.step == STOP_AT:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(run, task, indices, phase, *rest)

    monkeypatch.setattr(loop, "step_loss", signalled)
    cfg, out = config(tiny_checkpoint, small_data_dir, tmp_path / "cache", True), tmp_path / "run"
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg, out, TrainOptions(progress=False))
    monkeypatch.undo()
    assert stopped.value.step == STOP_AT + 1
    train(cfg, out, TrainOptions(progress=False, resume=True))
    assert_same_files(unprefetched, out)


def test_a_prefetched_step_does_not_sync(tiny_checkpoint, small_data_dir, tmp_path):
    run = ready_run(tiny_checkpoint, small_data_dir, ["model.pair_encoding=cross", "train.swap_pairs=true",
                                                       "train.prefetch=true"], "cpu", tmp_path)  # fmt: skip
    phase, log = run.cfg.train.phases[0], StepLog(run)
    schedule = [TASKS[i % len(TASKS)] for i in range(9)]
    prefetch = loop.make_prefetcher(run, phase, schedule, 0)
    try:
        for task in schedule[:3]:  # warm-up: optimizer state, first-use caches
            loop.train_step(run, phase, task, log, prefetch)
        taken = []
        take = prefetch.take

        def recording(*args):
            batch = take(*args)
            taken.append(batch is not None)
            return batch

        prefetch.take = recording
        with OpCount() as count:
            for task in schedule[3:]:
                loop.train_step(run, phase, task, log, prefetch)
    finally:
        prefetch.close()
    assert taken == [True] * 6, "every counted step used the batch built ahead"
    assert count.total > 0 and count.syncs == 0 and count.to_host == 0, dict(count.sites)
