"""minbert/training/sweep.py: a small sweep on the tiny checkpoint writes its outputs; space files are checked."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("optuna")

from minbert.config import ConfigError, load_config, to_dict
from minbert.training.sweep import SweepOptions, load_space, sweep


def tiny(tiny_checkpoint, small_data_dir, tmp_path) -> list[str]:
    return [f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={tmp_path / 'cache'}",
            "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1", "train.predict_test=false",
            "train.phases=[{epochs: 2, lr: 1e-3}]"]  # fmt: skip


def test_four_trials_write_trials_csv_best_yaml_and_pictures(tiny_checkpoint, small_data_dir, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.phases.0.lr: {low: 1e-4, high: 3e-3, log: true}\ntrain.phases.0.warmup_ratio: {low: 0.0, high: 0.3}\n")
    out, overrides = tmp_path / "sweep", tiny(tiny_checkpoint, small_data_dir, tmp_path)
    best = sweep(None, space, out, SweepOptions(trials=4, pruner="none", sampler_seed=0), overrides)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"] and all(r["state"] == "COMPLETE" for r in rows)
    assert rows[0]["baseline"] == "True" and float(rows[0]["train.phases.0.lr"]) == 1e-3  # the config's own values first
    values = [float(r["overall"]) for r in rows]
    assert best["value"] == max(values)
    reloaded = load_config(out / "best.yaml")
    assert to_dict(reloaded) == to_dict(load_config(out / f"trial-{best['best']:04d}" / "config.yaml"))
    for name in ("history.png", "importances.png", "parallel.png"):
        assert (out / name).stat().st_size > 1000


@pytest.mark.parametrize("text, line, reason", [
    ("train.phases.0.lr: {low: 1e-4, high: 3e-3}\ntrain.phases.0.nope: {low: 0, high: 1}\n", 2, "unknown config key"),
    ("train.phases.0.lr:\n  low: 1e-3\n  high: 1e-4\n", 2, "must be below high"),
    ("train.phases.0.lr: {low: 0, high: 1e-3, log: true}\n", 1, "log scale needs low > 0"),
    ("train.batch_size: {low: a, high: 8, type: int}\n", 1, "not an integer"),
    ("train.batch_size: {choices: []}\n", 1, "non-empty list"),
    ("model.pooling: {choices: [cls, max]}\n", 1, "not a valid value"),
    ("train.batch_size: {low: 1, high: 8, kind: int}\n", 1, "unknown spec key 'kind'"),
])  # fmt: skip
def test_bad_space_files_name_file_and_line(tmp_path, text, line, reason):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_space(space, None)
    assert str(e.value).startswith(f"{space}:{line}: ") and reason in str(e.value)


def test_public_suggest_stores_the_space_distributions(tmp_path):
    import optuna

    from minbert.training.sweep import suggest

    space = tmp_path / "space.yaml"
    space.write_text("train.phases.0.lr: {low: 1e-5, high: 1e-3, log: true}\ntrain.phases.0.warmup_ratio: {low: 0.0, high: 0.3}\n"
                     "train.batch_size: {low: 8, high: 32, type: int, step: 8}\ntrain.phases.0.epochs: {low: 1, high: 4, type: int, log: true}\n"
                     "model.pooling: {choices: [cls, mean]}\n")  # fmt: skip
    params = load_space(space, None)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        values = {p.key: suggest(trial, p) for p in params}
        study.tell(trial, 0.0)
    stored = study.trials[-1]
    assert stored.distributions == {p.key: p.distribution() for p in params}
    assert stored.params == values and values["train.batch_size"] in (8, 16, 24, 32) and values["model.pooling"] in ("cls", "mean")
