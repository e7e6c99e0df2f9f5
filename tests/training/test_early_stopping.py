"""Early stopping (`train.early_stopping`): after `patience` dev evaluations in a row that do not
beat the best dev overall by more than min_delta, the run stops training after that evaluation,
finishes as a complete run does (best.safetensors scored, prediction files, metrics.json saying
`stopped_early`), says why in events.jsonl and on the console; its count survives a resume.

A min_delta larger than any score can move (10) makes every evaluation after the first count:
the run stops at a known evaluation whatever the scores are.
"""

import json

import pytest
from test_run_state import OUTPUTS, assert_same_run

from minbert.config import ConfigError, load_config
from minbert.run_files import BEST, LAST, load_checkpoint
from minbert.training import TrainOptions, train

QUIET = TrainOptions(progress=False)


def stopping_config(tiny_checkpoint, small_data_dir, cache, *extra):
    # 48 rows a task, batches of 8: 18 steps an epoch
    return load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={cache}",
        "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1", "train.log_every_steps=4",
        "train.checkpoint_every_steps=5", *extra])  # fmt: skip


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_stops_after_the_evaluation_that_exhausts_the_patience(tiny_checkpoint, small_data_dir, tmp_path, capsys):
    cfg = stopping_config(tiny_checkpoint, small_data_dir, tmp_path / "cache", "train.early_stopping={patience: 2, min_delta: 10}",
                          "train.phases=[{epochs: 5, lr: 1e-3}, {name: more, epochs: 2, lr: 1e-3}]")  # fmt: skip
    out = tmp_path / "run"
    scores = train(cfg, out, QUIET)
    epochs = lines(out / "epochs.jsonl")
    assert [e["step"] for e in epochs] == [18, 36, 54]  # the first improves; the second and third do not
    assert len(lines(out / "steps.jsonl")) == 54
    best = max(e["dev"]["overall"] for e in epochs)  # the kept model: any improvement, min_delta or not
    assert load_checkpoint(out / BEST).dev["overall"] == best and scores["overall"] == pytest.approx(best, abs=5e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_early"]["step"] == 54 and metrics["stopped_early"]["at"] == "epoch"
    assert all((out / name).exists() for name in OUTPUTS)
    events = [e for e in lines(out / "events.jsonl") if e["event"] == "stopped_early"]
    assert len(events) == 1 and events[0]["step"] == 54 and events[0]["best"] == best
    assert "2 dev evaluation(s) in a row without improving the best dev overall by more than 10" in events[0]["reason"]
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[early stopping]")]
    assert len(said) == 1 and "training stopped after step 54" in said[0] and f"{best:.4f}" in said[0]
    assert load_checkpoint(out / LAST).progress.stopped_early["step"] == 54


def test_a_probe_stops_training_inside_an_epoch(tiny_checkpoint, small_data_dir, tmp_path):
    # Probes at steps 5, 10, 15: the first improves (nothing before it), the next two cannot.
    cfg = stopping_config(tiny_checkpoint, small_data_dir, tmp_path / "cache", "train.early_stopping={patience: 2, min_delta: 10}",
                          "train.eval_subset=16", "train.phases=[{epochs: 2, lr: 1e-3, eval_every_steps: 5}]")  # fmt: skip
    out = tmp_path / "run"
    train(cfg, out, QUIET)
    assert [p["step"] for p in lines(out / "evals.jsonl")] == [5, 10, 15]
    assert len(lines(out / "steps.jsonl")) == 15 and not lines(out / "epochs.jsonl")
    held = load_checkpoint(out / LAST).progress
    assert held.step == 15 and held.stopped_early["at"] == "probe"
    assert json.loads((out / "metrics.json").read_text())["stopped_early"]["step"] == 15
    assert all((out / name).exists() for name in OUTPUTS)
    # Resumed, a run that stopped early only finishes: nothing more is trained.
    train(cfg, out, TrainOptions(progress=False, resume=True))
    assert len(lines(out / "steps.jsonl")) == 15
    # Nor is it continued as if its phases had all run.
    with pytest.raises(ValueError, match=r"stopped early \(train.early_stopping, after step 15\)"):
        train(cfg, tmp_path / "next", TrainOptions(progress=False, init_from=out))


def test_the_count_survives_a_resume(tiny_checkpoint, small_data_dir, tmp_path):
    cfg = stopping_config(tiny_checkpoint, small_data_dir, tmp_path / "cache", "train.early_stopping={patience: 2, min_delta: 10}",
                          "train.phases=[{epochs: 5, lr: 1e-3}]")  # fmt: skip
    train(cfg, tmp_path / "reference", QUIET)
    out = tmp_path / "run"
    train(cfg, out, TrainOptions(progress=False, stop_after_epochs=2))  # one evaluation without improvement counted
    assert load_checkpoint(out / LAST).progress.evals_without_improvement == 1
    train(cfg, out, TrainOptions(progress=False, resume=True))
    assert [e["step"] for e in lines(out / "epochs.jsonl")] == [18, 36, 54]  # not 72: the count went on from 1
    assert_same_run(tmp_path / "reference", out)


def test_off_by_default_and_metrics_unchanged(tiny_checkpoint, small_data_dir, tmp_path):
    cfg = stopping_config(tiny_checkpoint, small_data_dir, tmp_path / "cache", "train.phases=[{epochs: 2, lr: 1e-3}]")
    assert cfg.train.early_stopping.patience is None
    train(cfg, tmp_path / "run", QUIET)
    assert len(lines(tmp_path / "run" / "epochs.jsonl")) == 2
    assert "stopped_early" not in json.loads((tmp_path / "run" / "metrics.json").read_text())


@pytest.mark.parametrize("override, message", [
    ("train.early_stopping={patience: 0}", r"^train.early_stopping.patience: 0 is out of range \(allowed: >= 1\)"),
    ("train.early_stopping.patience=-2", r"^train.early_stopping.patience: -2 is out of range"),
    ("train.early_stopping={patience: 2, min_delta: -0.1}", r"^train.early_stopping.min_delta: -0.1 is out of range"),
    ("train.early_stopping.min_delta=nan", r"^train.early_stopping.min_delta: nan is out of range"),
    ("train.early_stopping={patience: 2, delta: 0.1}", r"unknown config key 'train.early_stopping.delta'"),
    ("train.early_stopping.patience=two", r"train.early_stopping.patience"),
])  # fmt: skip
def test_bad_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
