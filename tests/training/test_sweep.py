"""minbert/training/sweep.py: a small sweep on the tiny checkpoint writes its outputs; a bad
trial is pruned (its run directory kept); two worker processes share one SQLite study; a worker
killed mid-trial leaves the trial FAIL and --resume finishes the study; space files are checked."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from minbert.config import ConfigError, load_config, to_dict
from minbert.configs import resolve_config
from minbert.training.sweep import SweepOptions, load_space, open_study, sweep

REPO = Path(__file__).resolve().parents[2]


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
    trial = load_config(out / f"trial-{best['best']:04d}" / "config.yaml")
    # The trial's config.yaml records the precision "auto" resolved to there; best.yaml keeps "auto",
    # so that it trains at the precision native wherever it is run.
    assert reloaded.train.precision == "auto" and trial.train.precision == "fp32"
    trial.train.precision = "auto"
    assert to_dict(reloaded) == to_dict(trial)
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


# ---------------------------------------------------------------------------------------
# Pruning, workers, a killed worker


@pytest.fixture
def learnable_data_dir(small_data_dir, tmp_path) -> Path:
    """small_data_dir with each dev set the task's 48 training rows: a few epochs at a sane lr
    raise the dev scores far above an untrained model's, so a trial that learns nothing is bad."""
    out = tmp_path / "learnable"
    shutil.copytree(small_data_dir, out)
    for task in ("ids-sst", "quora", "sts"):
        shutil.copy(out / f"{task}-train.csv", out / f"{task}-dev.csv")
    return out


def states(out: Path) -> dict[int, str]:
    return {int(r["number"]): r["state"] for r in csv.DictReader((out / "trials.csv").open())}


def test_a_trial_made_bad_is_pruned_and_keeps_its_run_directory(tiny_checkpoint, learnable_data_dir, tmp_path):
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text("train.phases.0.lr: {low: 1e-9, high: 1e-1, log: true}\n")
    overrides = [*tiny(tiny_checkpoint, learnable_data_dir, tmp_path), "train.phases=[{epochs: 4, lr: 1e-3}]"]
    out = tmp_path / "sweep"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)  # from the 3rd evaluation (epoch 3 of 4)
    options = SweepOptions(trials=3, pruner=pruner, baseline=False, sampler_seed=0)
    out.mkdir()
    study = open_study(out, options)
    for lr in (1e-2, 3e-3, 1e-8):  # two that learn, then one that cannot
        study.enqueue_trial({"train.phases.0.lr": lr})
    sweep(None, space, out, options, overrides)
    assert states(out) == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED"}
    pruned = out / "trial-0002"
    note = json.loads((pruned / "trial.json").read_text())
    assert note["state"] == "PRUNED" and [e["kind"] for e in note["evaluations"]] == ["epoch"] * 3  # not the 4th epoch
    good = [json.loads((out / f"trial-{i:04d}" / "trial.json").read_text()) for i in (0, 1)]
    third = sorted(g["evaluations"][2]["overall"] for g in good)
    assert note["evaluations"][2]["overall"] < third[0]  # below both, so below their median
    events = [json.loads(line) for line in (pruned / "events.jsonl").read_text().splitlines()]
    stop = [e for e in events if e.get("event") == "stopped"]
    assert len(stop) == 1 and stop[0]["by"] == "on_eval" and "TrialPruned: pruned at evaluation 2" in stop[0]["reason"]
    assert (pruned / "last.safetensors").is_file() and (pruned / "config.yaml").is_file()
    assert "trial 0" in (out / "best.yaml").read_text() or "trial 1" in (out / "best.yaml").read_text()


@pytest.mark.parametrize("warmup", [0, 1, 2])
def test_the_median_pruner_judges_no_trial_at_its_first_prune_warmup_evaluations(tmp_path, warmup):
    import optuna

    study = open_study(tmp_path, SweepOptions(prune_warmup=warmup))
    for _ in range(2):  # two finished trials at 1.0 at every evaluation: the median
        trial = study.ask()
        for step in range(3):
            trial.report(1.0, step)
        study.tell(trial, 1.0)
    bad = study.ask()
    judged = []
    for step in range(3):
        bad.report(0.0, step)
        judged.append(bad.should_prune())
    assert judged == [step >= warmup for step in range(3)]
    study.tell(bad, state=optuna.trial.TrialState.PRUNED)


def test_a_negative_prune_warmup_is_refused(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.phases.0.lr: {low: 1e-4, high: 3e-3, log: true}\n")
    with pytest.raises(ConfigError, match="--prune-warmup: -1 must be >= 0"):
        sweep(None, space, tmp_path / "sweep", SweepOptions(trials=1, prune_warmup=-1))
    assert not (tmp_path / "sweep").exists()


def worker(out: Path, space: Path, trials: int, overrides: list[str], *flags: str) -> subprocess.Popen:
    """`python -m minbert.cli sweep` in a child process, this checkout first on its PYTHONPATH."""
    args = [sys.executable, "-m", "minbert.cli", "sweep", "--config", "main", "--space", str(space), "--trials",
            str(trials), "--out", str(out), "--pruner", "none", "--no-progress", *flags, *(f"--{o}" for o in overrides)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(tiny_checkpoint, small_data_dir, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.phases.0.lr: {low: 1e-4, high: 3e-3, log: true}\n")
    out = tmp_path / "sweep"
    overrides = [*tiny(tiny_checkpoint, small_data_dir, tmp_path), "train.phases=[{epochs: 1, lr: 1e-3}]"]
    procs = [worker(out, space, 5, overrides, "--resume", "--no-baseline", "--seed", str(seed)) for seed in (1, 2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    import optuna

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    trials = [t for t in study.get_trials(deepcopy=False) if "note" not in t.user_attrs]
    surplus = [t for t in study.get_trials(deepcopy=False) if "note" in t.user_attrs]  # both saw 4 of 5 and began one
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    assert len(surplus) <= 1 and all(t.state.name == "FAIL" and "surplus" in t.user_attrs["note"] for t in surplus)
    assert all(t.number > max(c.number for c in trials) for t in surplus) and not list(out.glob("trial-*/trial.json"))[5:]
    dirs = {t.user_attrs["run_dir"] for t in trials}
    assert dirs == {str(out / f"trial-{i:04d}") for i in range(5)} and all((Path(d) / "metrics.json").is_file() for d in dirs)
    notes = [json.loads((out / f"trial-{i:04d}" / "trial.json").read_text()) for i in range(5)]
    assert [n["trial"] for n in notes] == list(range(5)) and len({n["params"]["train.phases.0.lr"] for n in notes}) == 5
    assert {n["worker"] for n in notes} == {f"{socket.gethostname()}:{p.pid}" for p in procs}  # each ran some, none twice
    assert all("best: trial" in o for o in outputs)  # both saw the study end


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_it_failed_and_resume_finishes_the_study(tiny_checkpoint, small_data_dir,
                                                                                   tmp_path):  # fmt: skip
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text("train.phases.0.lr: {low: 1e-4, high: 3e-3, log: true}\n")
    out = tmp_path / "sweep"
    # Epochs enough that a trial outlasts the polling below even on a quiet machine (3 took < 1 s).
    overrides = [*tiny(tiny_checkpoint, small_data_dir, tmp_path), "train.phases=[{epochs: 12, lr: 1e-3}]"]
    proc = worker(out, space, 3, overrides, "--heartbeat-s", "1", "--seed", "0")
    storage = f"sqlite:///{out / 'study.db'}"
    deadline = time.monotonic() + 180
    while not (out / "trial-0001" / "config.yaml").is_file():  # trial 0 complete, trial 1's run started
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    study = optuna.load_study(study_name="sweep", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]  # the dead worker's trial, for now
    time.sleep(4)  # past the grace period: 3 x heartbeat_s, at least 3 s
    with pytest.raises(ConfigError, match="pass --resume"):
        sweep(resolve_config("main"), space, out, SweepOptions(trials=3, heartbeat_s=1, pruner="none"), overrides)
    sweep(resolve_config("main"), space, out, SweepOptions(trials=3, heartbeat_s=1, pruner="none", resume=True), overrides)
    trials = optuna.load_study(study_name="sweep", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == trials[1].params  # the failed trial's parameters, tried again
    assert states(out) == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE"}
    assert (out / "trial-0001").is_dir() and (out / "trial-0003" / "metrics.json").is_file()
