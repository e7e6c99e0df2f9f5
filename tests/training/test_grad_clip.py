"""Gradient clipping (`train.max_grad_norm`): the optimizer steps with the gradients scaled to
that total norm when theirs is larger, unchanged otherwise; steps.jsonl records each step's norm
before clipping ("grad_norm"), and nothing new when clipping is off (the golden runs hold that)."""

import json

import pytest
import torch
from test_distributed import ALL_TASKS, ddp_config, grads, loss_of, model_and_data, no_dropout_checkpoint, norm  # noqa: F401
from test_grad_accum import global_batches, stepping_run

from minbert.training import TrainOptions, train
from minbert.training.loop import train_step


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_the_step_takes_the_clipped_gradient_and_logs_the_norm_before(max_norm, no_dropout_checkpoint, small_data_dir, tmp_path):
    cfg = ddp_config(no_dropout_checkpoint, small_data_dir, f"train.max_grad_norm={max_norm}")
    model, data = model_and_data(cfg)
    run, log = stepping_run(cfg, model, data)
    run.out_dir, log.path = tmp_path, tmp_path / "steps.jsonl"
    for task in ALL_TASKS:
        indices = global_batches(cfg, data, task)[0]
        train_step(run, cfg.train.phases[0], task, log)  # lr 0: the weights stay where G is taken
        model.zero_grad(set_to_none=True)
        loss_of(model, task, indices, data, cfg).backward()
        whole = grads(model)
        model.zero_grad(set_to_none=True)  # the next step starts from none, as in a run
        stepped, size = run.optimizer.seen[-1], norm(whole.values())
        scale = min(1.0, max_norm / (size + 1e-6))  # torch's clip_grad_norm_
        assert stepped.keys() == whole.keys(), sorted(set(stepped) ^ set(whole))
        if max_norm > size:
            assert all(torch.equal(stepped[n], whole[n]) for n in whole)  # below the cap: untouched
        else:
            assert norm(stepped.values()) == pytest.approx(max_norm, rel=1e-4)
            assert all(torch.allclose(stepped[n], whole[n] * scale, rtol=1e-4, atol=1e-12) for n in whole)
    log.flush()
    logged = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [s["task"] for s in logged] == list(ALL_TASKS)
    for s, task in zip(logged, ALL_TASKS):
        model.zero_grad(set_to_none=True)
        loss_of(model, task, global_batches(cfg, data, task)[0], data, cfg).backward()
        assert s["grad_norm"] == pytest.approx(norm(grads(model).values()), rel=1e-4, abs=1e-5)


def test_a_clipped_run_logs_every_steps_norm(tiny_checkpoint, small_data_dir, tmp_path):
    out = tmp_path / "run"
    cfg = ddp_config(tiny_checkpoint, small_data_dir, "train.max_grad_norm=0.1", "train.batch_size=8",
                     "train.log_every_steps=5", "train.phases=[{epochs: 1, lr: 1e-3}]", f"data.cache_dir={tmp_path}")  # fmt: skip
    train(cfg, out, TrainOptions(progress=False))
    logged = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(logged) == 18 and all(s["grad_norm"] > 0 for s in logged)
    assert len({s["grad_norm"] for s in logged}) == 18  # each step's own


def test_a_non_finite_gradient_norm_stops_the_run_naming_the_step(tiny_checkpoint, small_data_dir, tmp_path, monkeypatch):
    import torch.nn.utils

    from minbert.run_files import RunError

    original = torch.nn.utils.clip_grad_norm_

    def overflowing(params, max_norm):  # the third step's gradients overflow
        norm = original(params, max_norm)
        return norm * float("inf") if len(calls) == 2 else calls.append(1) or norm

    calls = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", overflowing)
    cfg = ddp_config(tiny_checkpoint, small_data_dir, "train.max_grad_norm=1.0", "train.batch_size=8",
                     "train.log_every_steps=5", "train.phases=[{epochs: 1, lr: 1e-3}]", f"data.cache_dir={tmp_path}")  # fmt: skip
    with pytest.raises(RunError, match=r"training diverged: the gradient norm at step 3 \(sts\) is inf"):
        train(cfg, tmp_path / "run", TrainOptions(progress=False))
