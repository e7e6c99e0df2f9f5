"""A training step between two logging points never makes the host wait for the device: no
`aten._local_scalar_dense` (what `.item()`, `float(t)`, `bool(t)` call) and no device-to-host
copy, counted at the dispatcher by `OpCount` (minbert/training/op_count.py) around
`loop.train_step`, for every task, with padded batches, siamese and cross-encoded pairs, padded
and packed (train.packing).

On a CPU-only machine every tensor is on the CPU, so the device-to-host part is trivially
zero there; with CUDA available the same steps run again on the GPU, where it is not. The
`_local_scalar_dense` part is meaningful on the CPU too: it is called whatever the device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from minbert.config import load_config
from minbert.runs import build_model, encode_all, read_all
from minbert.tasks.encoding import Batch, EncodedTask
from minbert.training.logs import StepLog
from minbert.training.loop import lr_lambda, make_optimizer, train_step
from minbert.training.op_count import OpCount
from minbert.training.state import Run, TaskStream

TASKS = ("sst", "para", "sts")
LOG_EVERY = 50
COUNTED_STEPS = 6  # fewer than LOG_EVERY: no flush among them
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PAIRS = {
    "siamese": ["model.pair_encoding=siamese", "model.pooling=cls", "model.similarity_head=cosine"],
    # swapped pairs, R-Drop and CoSENT: the host-side coins and the extra loss terms
    "cross": ["model.pair_encoding=cross", "model.pooling=mean", "train.swap_pairs=true", "train.rdrop=0.5",
              "train.sts_loss=mse+cosent"],
    # gradient clipping (its norm kept on the device until the flush) and accumulation
    "clipped": ["model.pair_encoding=siamese", "train.max_grad_norm=0.5", "train.grad_accum_steps=2"],
}  # fmt: skip
PAIRS.update({f"{name}-packed": [*extra, "train.packing=true"] for name, extra in list(PAIRS.items())})  # packed batches too


def ready_run(tiny_checkpoint, small_data_dir, extra: list[str], device: str, out_dir: Path) -> Run:
    """A run at its first step as run_phase leaves it: model, data, streams, optimizer, schedule.
    Random batches (bucket_batches=1) of 16 from 48 rows: padded."""
    cfg = load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", "train.batch_size=16",
        "train.bucket_batches=1", f"train.log_every_steps={LOG_EVERY}", "train.phases=[{epochs: 1, lr: 1e-3}]",
        *extra])  # fmt: skip
    model, tokenizer = build_model(cfg)
    train = encode_all(read_all(cfg, {"train": TASKS}), tokenizer, cfg)["train"]
    run = Run.bare(cfg, model.to(device).train(), train)
    run.device, run.out_dir = torch.device(device), out_dir  # steps.jsonl goes there
    run.streams = {t: TaskStream(t) for t in TASKS}
    phase = cfg.train.phases[0]
    run.optimizer = make_optimizer(model, phase, cfg.train.fused_adamw)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_lambda(phase, 100))
    return run


@pytest.fixture
def batches(monkeypatch) -> list[Batch]:
    """Every batch EncodedTask.batch builds (looked at after counting)."""
    built: list[Batch] = []
    build = EncodedTask.batch

    def recording(self, *args, **kwargs):
        batch = build(self, *args, **kwargs)
        built.append(batch)
        return batch

    monkeypatch.setattr(EncodedTask, "batch", recording)
    return built


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pairs", sorted(PAIRS))
def test_a_training_step_does_not_sync(pairs, device, tiny_checkpoint, small_data_dir, batches, tmp_path):
    run = ready_run(tiny_checkpoint, small_data_dir, PAIRS[pairs], device, tmp_path)
    phase, log = run.cfg.train.phases[0], StepLog(run)
    for task in TASKS:  # warm-up: optimizer state, first-use caches
        train_step(run, phase, task, log)
    del batches[:]
    with OpCount() as count:
        for i in range(COUNTED_STEPS):
            train_step(run, phase, TASKS[i % len(TASKS)], log)
    assert count.total > 0, "the counting mode saw no operators"
    assert sum(bool((b.attention_mask == 0).any()) for b in batches) >= 2, "the counted steps need padded batches"
    assert all((b.packed is not None) == pairs.endswith("-packed") for b in batches)
    assert count.syncs == 0, f"{count.syncs} syncs in {COUNTED_STEPS} steps: {dict(count.sites)}"
    assert count.to_host == 0, f"{count.to_host} device-to-host copies in {COUNTED_STEPS} steps: {dict(count.sites)}"
    log.flush()  # at a log point the losses come back, once
    assert len(log.pending) == 0 and run.progress.loss_counts
    logged = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert all(("grad_norm" in s) == pairs.startswith("clipped") for s in logged)


@pytest.mark.parametrize("device", DEVICES)
def test_op_count_sees_every_way_of_reading_a_value(device):
    """The counter itself: each of these waits for the device (on a GPU) and is counted."""
    t = torch.ones(3, device=device)
    reads = [lambda: t.sum().item(), lambda: float(t.sum()), lambda: bool(t.all()), lambda: 1 if t[0] else 0]
    for read in reads:
        with OpCount() as count:
            read()
        assert count.syncs == 1 and count.sites, count.ops
    with OpCount() as count:
        t.add(1).mul(2)
    assert (count.syncs, count.to_host, count.total) == (0, 0, 2)
    if device != "cpu":
        for copy in (lambda: t.cpu(), lambda: t.to("cpu"), lambda: torch.empty(3).copy_(t)):
            with OpCount() as count:
                copy()
            assert count.to_host == 1, count.ops
