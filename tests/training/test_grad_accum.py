"""Gradient accumulation (`train.grad_accum_steps`): one optimizer step from k micro-batches of a
task's global batch of k x batch_size has the gradient of that whole batch (one process, and two
gloo processes through DDP, where only the last micro-batch all-reduces); steps, the schedule
and steps.jsonl count optimizer steps; a stopped run resumes to the uninterrupted files.

The gradients are compared as tests/training/test_distributed.py compares DDP's with one
process's: within N eps S, N the padded positions the batch's gradient sums over and S the size
of the terms it sums (gradient_tolerance there). The micro-batches pad to their own lengths and
add their weighted gradients in another order than the whole batch does: the same kind of
rounding as two ranks' slices.
"""

import json
import math
import os

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from test_distributed import (ALL_TASKS, ddp_config, gradient_and_term_scale, gradient_tolerance, grads, join_group,
                              model_and_data, no_dropout_checkpoint, norm, spawn_two)  # noqa: F401 (a fixture)
from test_run_state import assert_same_run

from minbert.config import ConfigError, load_config
from minbert.training import TrainOptions, train
from minbert.training.logs import StepLog
from minbert.training.loop import lr_lambda, train_step
from minbert.training.state import Run, TaskStream

QUIET = TrainOptions(progress=False)
# (k, batch_size) on the 48 rows of a task: global batches of 10 (micro 5 + 5) and a last of 8
# (5 + 3); of 27 (9 + 9 + 9) and a last of 21 (9 + 9 + 3): uneven last micro-batches.
CASES = [(2, 5), (3, 9)]


class RecordingSGD(torch.optim.SGD):
    """SGD at lr 0 (the weights stay) that keeps the gradients each step is given."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model.parameters(), lr=0.0)
        self.model, self.seen = model, []

    def step(self, closure=None):
        self.seen.append(grads(self.model))
        return super().step(closure)


def stepping_run(cfg, model, data, net=None) -> tuple[Run, StepLog]:
    run = Run.bare(cfg, model, data, net)
    run.streams = {t: TaskStream(t) for t in ALL_TASKS}
    run.optimizer = RecordingSGD(model)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda step: 1.0)
    return run, StepLog(run)


def global_batches(cfg, data, task) -> list[list[int]]:
    """The global batches of one pass over `task`, as its stream draws them (k x batch_size)."""
    stream, size = TaskStream(task), cfg.train.batch_size * cfg.train.grad_accum_steps
    first = [stream.next_indices(data[task], size, cfg.train.seed, cfg.train.bucket_batches)]
    while stream.passes == 0:
        first.append(stream.next_indices(data[task], size, cfg.train.seed, cfg.train.bucket_batches))
    return first


def assert_whole_batch_gradients(cfg, model, data, task, seen) -> None:
    batches = global_batches(cfg, data, task)
    b = cfg.train.batch_size
    assert len(seen) == len(batches) and any(len(ix) > b and len(ix) % b for ix in batches), "an uneven last micro-batch"
    for k, (indices, ours) in enumerate(zip(batches, seen)):
        whole, scale = gradient_and_term_scale(model, task, indices, data, cfg)
        assert ours.keys() == whole.keys(), task
        error = norm(ours[n] - whole[n] for n in whole)
        tolerance = gradient_tolerance(data[task], indices, scale)
        assert error <= tolerance, f"{task} step {k} ({len(indices)} examples): |g - G| = {error:.3g} > {tolerance:.3g}"


@pytest.mark.parametrize("k, batch", CASES)
def test_an_accumulated_step_has_the_whole_batch_gradient(k, batch, no_dropout_checkpoint, small_data_dir):
    cfg = ddp_config(no_dropout_checkpoint, small_data_dir, f"train.batch_size={batch}", f"train.grad_accum_steps={k}")
    model, data = model_and_data(cfg)
    for task in ALL_TASKS:
        run, log = stepping_run(cfg, model, data)
        for _ in global_batches(cfg, data, task):
            train_step(run, cfg.train.phases[0], task, log)
        assert_whole_batch_gradients(cfg, model, data, task, run.optimizer.seen)
        # The logged loss of a step is the whole batch's mean loss.
        first = global_batches(cfg, data, task)[0]
        from test_distributed import loss_of

        assert float(log.pending[0][2].detach()) == pytest.approx(float(loss_of(model, task, first, data, cfg)), rel=1e-5)


def _accumulating_worker(rank, world, port, cfg, out) -> None:
    """Each rank steps through one pass of every task and saves the gradients of each step, and
    how many times DDP all-reduced (its comm hook was called) in one backward and in each step."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    join_group(rank, world, port)
    try:
        model, data = model_and_data(cfg)
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        calls = []

        def counting(state, bucket):
            calls.append(1)
            return allreduce_hook(state, bucket)

        net.register_comm_hook(None, counting)
        counts = {}
        for task in ALL_TASKS:
            run, log = stepping_run(cfg, model, data, net)
            for k in range(len(global_batches(cfg, data, task))):
                before = len(calls)
                train_step(run, cfg.train.phases[0], task, log)
                counts[f"{task}/{k}"] = len(calls) - before
            for k, g in enumerate(run.optimizer.seen):
                save_file(g, out / f"grads-rank{rank}-{task}-{k}.safetensors")
        before = len(calls)
        net(ALL_TASKS[0], data[ALL_TASKS[0]].batch([0, 1])).float().sum().backward()  # one plain backward
        counts["one backward"] = len(calls) - before
        (out / f"counts-rank{rank}.json").write_text(json.dumps(counts))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_accumulated_steps_under_ddp_have_the_whole_batch_gradient(no_dropout_checkpoint, small_data_dir, tmp_path):
    torch.set_num_threads(1)
    k, batch = CASES[0]  # micro-batches of 5 (and 3): each splits 3 + 2 (2 + 1) over the ranks
    cfg = ddp_config(no_dropout_checkpoint, small_data_dir, f"train.batch_size={batch}", f"train.grad_accum_steps={k}")
    spawn_two(_accumulating_worker, cfg, tmp_path)
    model, data = model_and_data(cfg)
    for rank in (0, 1):
        counts = json.loads((tmp_path / f"counts-rank{rank}.json").read_text())
        once = counts.pop("one backward")
        # no_sync: the micro-batches before the last do not all-reduce; each step reduces once.
        assert once > 0 and set(counts.values()) == {once}, counts
    for task in ALL_TASKS:
        n = len(global_batches(cfg, data, task))
        ours = [load_file(tmp_path / f"grads-rank0-{task}-{i}.safetensors") for i in range(n)]
        theirs = [load_file(tmp_path / f"grads-rank1-{task}-{i}.safetensors") for i in range(n)]
        assert all(a.keys() == b.keys() and all(torch.equal(a[p], b[p]) for p in a) for a, b in zip(ours, theirs))
        assert_whole_batch_gradients(cfg, model, data, task, ours)


def accum_config(tiny_checkpoint, small_data_dir, cache, *extra):
    return load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={cache}",
        "train.batch_size=4", "train.grad_accum_steps=2", "train.eval_batch_size=16", "train.threads=1",
        "train.log_every_steps=4", "train.checkpoint_every_steps=5", *extra])  # fmt: skip


def test_steps_schedule_and_logs_count_optimizer_steps(tiny_checkpoint, small_data_dir, tmp_path):
    # 48 rows a task, global batches of 2 x 4: 6 rounds x 3 tasks = 18 optimizer steps an epoch
    # (36 micro-batches); the warm-up and the linear decay run over those 18 x 2 steps.
    cfg = accum_config(tiny_checkpoint, small_data_dir, tmp_path / "cache",
                       "train.phases=[{epochs: 2, lr: 1e-3, warmup_ratio: 0.25, decay: linear}]")  # fmt: skip
    out = tmp_path / "run"
    train(cfg, out, QUIET)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 37))
    factor = lr_lambda(cfg.train.phases[0], 36)
    assert [s["lr"] for s in steps] == pytest.approx([1e-3 * factor(i) for i in range(36)], rel=1e-12)
    assert all(math.isfinite(s["loss"]) and "grad_norm" not in s for s in steps)
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [e["step"] for e in epochs] == [18, 36]


@pytest.mark.parametrize("phases, steps", [
    # MLM over SST's 48 sentences: 6 steps of 2 x 4; then 6 rounds x 3 tasks, R-Drop on SST and STS
    ("[{name: m, mode: mlm, tasks: [sst], epochs: 1, lr: 1e-3}, {name: ft, epochs: 1, lr: 1e-3}]", [6, 24]),
    # heads on cached encoder vectors: 6 rounds x 2 tasks
    ("[{name: f, mode: frozen, tasks: [sst, para], epochs: 1, lr: 1e-2}, {name: ft, epochs: 1, lr: 1e-3}]", [12, 30]),
])  # fmt: skip
def test_accumulation_with_rdrop_mlm_and_cached_features_runs(phases, steps, tiny_checkpoint, small_data_dir, tmp_path):
    cfg = accum_config(tiny_checkpoint, small_data_dir, tmp_path / "cache", "train.rdrop=0.5", f"train.phases={phases}")
    out = tmp_path / "run"
    train(cfg, out, QUIET)
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    assert [e["step"] for e in epochs] == steps
    assert len((out / "steps.jsonl").read_text().splitlines()) == steps[-1]


def test_a_stopped_accumulating_run_resumes_to_the_uninterrupted_files(tiny_checkpoint, small_data_dir, tmp_path):
    from test_stopping import send_self

    from minbert.training import loop
    from minbert.training.stopping import TrainingStopped

    cfg = accum_config(tiny_checkpoint, small_data_dir, tmp_path / "cache",
                       "train.phases=[{epochs: 2, lr: 2e-3}, {name: sst, tasks: [sst], epochs: 1, lr: 1e-3}]")  # fmt: skip
    train(cfg, tmp_path / "reference", QUIET)
    train(cfg, tmp_path / "by_epoch", TrainOptions(progress=False, stop_after_epochs=1))
    train(cfg, tmp_path / "by_epoch", TrainOptions(progress=False, resume=True))
    assert_same_run(tmp_path / "reference", tmp_path / "by_epoch")
    mp, original, sent = pytest.MonkeyPatch(), loop.step_loss, []

    def signal_in_step_12(run, *args):  # SIGTERM in the first micro-batch of step 12 (of 18 an epoch): once
        if run.progress.step == 11 and not sent:
            sent.append(send_self())
        return original(run, *args)

    mp.setattr(loop, "step_loss", signal_in_step_12)
    try:
        with pytest.raises(TrainingStopped):
            train(cfg, tmp_path / "by_signal", QUIET)
    finally:
        mp.undo()
    assert json.loads((tmp_path / "by_signal" / "steps.jsonl").read_text().splitlines()[-1])["step"] == 12
    train(cfg, tmp_path / "by_signal", TrainOptions(progress=False, resume=True))
    assert_same_run(tmp_path / "reference", tmp_path / "by_signal")


@pytest.mark.parametrize("override, message", [
    ("train.grad_accum_steps=0", "train.grad_accum_steps: 0 is out of range"),
    ("train.grad_accum_steps=1.5", "train.grad_accum_steps"),
])  # fmt: skip
def test_bad_accumulation_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_prefetch_with_accumulation_is_refused_naming_both():
    with pytest.raises(ConfigError, match=r"train.prefetch.*train.grad_accum_steps 2"):
        load_config(None, ["train.prefetch=true", "train.grad_accum_steps=2"])
    load_config(None, ["train.prefetch=true", "train.grad_accum_steps=1"])
