"""Run state: checkpoints that cannot run code, refuse damage clearly, survive a full disk and
kill -9; resuming reproduces the uninterrupted run file for file; one writer per directory;
a diverged run stops; the same seed gives the same files."""

import contextlib
import json
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minbert.checkpoint import CheckpointError
from minbert.cli import main as cli_main
from minbert.evaluation import write_predictions
from minbert.tasks import BUILTIN
from minbert.run_files import BEST, LAST, RunError, load_checkpoint, save_checkpoint
from minbert.training.run_state import CheckpointTimer, RunLock, config_differences  # fmt: skip

REPO = Path(__file__).resolve().parent.parent.parent
# 48 rows a task, batches of 8: 6 rounds x 3 tasks = 18 steps an epoch; 2 epochs, then 6 SST steps.
PHASES = "[{name: rr, epochs: 2, lr: 2e-3}, {name: sst_only, tasks: [sst], epochs: 1, lr: 1e-3}]"
TOTAL_STEPS = 42
OUTPUTS = [f"{t}-{s}-output.csv" for t in ("sst", "para", "sts") for s in ("dev", "test")]


def run_args(tiny_checkpoint, small_data_dir, *extra):
    return ["--no-progress", f"--model={tiny_checkpoint}", f"--data.dir={small_data_dir}", "--train.batch_size=8",
            "--train.eval_batch_size=16", "--train.threads=1", "--train.checkpoint_every_steps=4",
            "--train.log_every_steps=1", f"--train.phases={PHASES}", *extra]  # fmt: skip


def minbert(*args, **popen):
    """`minbert ...` as a real process (the console script's module)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "minbert.cli", *map(str, args)], env=env, cwd=REPO, **popen)


def run_to_end(*args) -> subprocess.CompletedProcess:
    proc = minbert(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def without_times(epochs_jsonl: Path) -> list[dict]:
    """The records without their wall times (elapsed, and how long the evaluation took)."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "eval_s")}
            for line in epochs_jsonl.read_text().splitlines()]  # fmt: skip


def assert_same_run(a: Path, b: Path, logs: tuple[str, ...] = ("metrics.json", "config.yaml", "steps.jsonl")) -> None:
    """Byte-identical results and `logs` (epochs.jsonl: wall times aside), identical weights."""
    for name in [*logs, *OUTPUTS]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert without_times(a / "epochs.jsonl") == without_times(b / "epochs.jsonl")
    for name in (BEST, LAST):
        wa, wb = load_checkpoint(a / name).model, load_checkpoint(b / name).model
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


@pytest.fixture(scope="module")
def reference_run(tiny_checkpoint, small_data_dir, tmp_path_factory):
    """An uninterrupted run of the test config, as a real process."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_to_end("train", "--out", out, *run_args(tiny_checkpoint, small_data_dir))
    assert done.returncode == 0, done.stderr
    return out


# ---------------------------------------------------------------------------------------
# Crashes and resuming


def kill_at_step(out: Path, step: int, args: list) -> int:
    """Start a run, SIGKILL it once steps.jsonl shows `step` steps (or later: it is a real,
    running process); returns the step count logged at the kill."""
    proc = minbert("train", "--out", out, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = out / "steps.jsonl", time.time() + 120
    logged = lambda: len(log.read_text().splitlines()) if log.exists() else 0  # noqa: E731
    while proc.poll() is None and logged() < step and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return logged()


# Kill points drawn at random once (seeded): mid-epoch, at epoch ends, before the first
# checkpoint, and during the final predictions are all in reach.
KILL_POINTS = random.Random(2026).sample(range(1, TOTAL_STEPS + 1), 3) + [2, TOTAL_STEPS]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_kill_9_then_resume_equals_uninterrupted(kill_at, reference_run, tiny_checkpoint, small_data_dir, tmp_path):
    out, args = tmp_path / "run", run_args(tiny_checkpoint, small_data_dir)
    logged = kill_at_step(out, kill_at, args)
    assert logged >= kill_at
    done = run_to_end("train", "--out", out, "--resume", *args)
    assert done.returncode == 0, done.stderr
    assert_same_run(reference_run, out)


def test_same_seed_gives_identical_files(tiny_checkpoint, small_data_dir, tmp_path):
    args = run_args(tiny_checkpoint, small_data_dir, "--train.phases=[{epochs: 1, lr: 2e-3}]")
    for name in ("a", "b"):
        assert cli_main(["train", "--out", str(tmp_path / name), *args]) == 0
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_resume_names_the_keys_that_differ(tiny_checkpoint, small_data_dir, tmp_path, capsys):
    args = run_args(tiny_checkpoint, small_data_dir, "--train.predict_test=false")
    assert cli_main(["train", "--out", str(tmp_path / "run"), *args]) == 0
    code = cli_main(["train", "--out", str(tmp_path / "run"), "--resume", *args, "--train.seed=4", "--train.phases.0.lr=1e-3"])
    err = capsys.readouterr().err
    assert code == 2 and "train.seed: 11711 then, 4 now" in err and "train.phases.0.lr: 0.002 then, 0.001 now" in err
    # when files are written is not what is computed: those keys may change
    assert cli_main(["train", "--out", str(tmp_path / "run"), "--resume", *args, "--train.checkpoint_every_steps=9"]) == 0


def test_config_differences_lists_dotted_keys():
    a = {"train": {"seed": 1, "phases": [{"lr": 1.0}, {"lr": 2.0}]}, "model": {"pooling": "cls"}}
    b = {"train": {"seed": 1, "phases": [{"lr": 1.0}, {"lr": 3.0}]}, "model": {"pooling": "mean"}}
    assert config_differences(a, b) == ["model.pooling: 'cls' then, 'mean' now", "train.phases.1.lr: 2.0 then, 3.0 now"]


def test_checkpoint_timer_by_steps_and_minutes():
    now = [0.0]
    timer = CheckpointTimer(every_steps=5, every_minutes=1.0, clock=lambda: now[0])
    assert [s for s in range(1, 12) if timer.due(s)] == [5, 6, 7, 8, 9, 10, 11]
    timer.reset(7)
    assert [s for s in range(8, 14) if timer.due(s)] == [12, 13]
    now[0] = 61.0
    assert timer.due(8)
    timer.reset(8)
    assert not timer.due(9)
    assert not CheckpointTimer(None, None).due(5)


# ---------------------------------------------------------------------------------------
# Files that must not run code, damaged files


class Payload:
    """Unpickling this creates a file: the harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def cli_error(args, capsys) -> tuple[int, str]:
    code = cli_main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_crafted_pickle_is_refused_and_runs_nothing(how, tmp_path, capsys):
    marker, evil = tmp_path / "pwned", tmp_path / "run" / BEST
    evil.parent.mkdir()
    payload = {"model": Payload(marker), "config": {}}
    torch.save(payload, evil) if how == "torch.save" else evil.write_bytes(pickle.dumps(payload))
    for target in (evil, evil.parent):
        with pytest.raises(CheckpointError, match="it is a pickle.*never unpickles"):
            load_checkpoint(target)
        code, err = cli_error(["evaluate", "--checkpoint", str(target)], capsys)
        assert code == 2 and f"minbert: error: {evil}: not a minbert checkpoint: it is a pickle" in err
    assert not marker.exists()
    # The file is live: what minbert refused would have run.
    shutil.copy(evil, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False) if how == "torch.save" else pickle.loads(evil.read_bytes())
    assert marker.exists()


@pytest.fixture(scope="module")
def finished_run(tiny_checkpoint, small_data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    args = run_args(tiny_checkpoint, small_data_dir, "--train.phases=[{epochs: 1, lr: 1e-3}]", "--train.predict_test=false")
    assert cli_main(["train", "--out", str(out), *args]) == 0
    return out


def damaged(kind: str, good: Path, path: Path) -> str:
    """Write a damaged checkpoint of `kind`; return the reason its error must give."""
    if kind == "empty":
        path.write_bytes(b"")
        return "the file is empty"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return "truncated"
    if kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
        return "not a safetensors file"
    if kind == "foreign safetensors":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(path))
        return "not a minbert checkpoint"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "truncated", "random bytes", "foreign safetensors"])
def test_damaged_checkpoint_is_refused_by_name(kind, finished_run, tmp_path, capsys):
    path = tmp_path / "best.safetensors"
    reason = damaged(kind, finished_run / BEST, path)
    with pytest.raises(CheckpointError, match=reason) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)
    code, err = cli_error(["evaluate", "--checkpoint", str(path)], capsys)
    assert code == 2 and err.startswith(f"minbert: error: {path}: ") and reason in err and err.count("\n") == 1


def test_damaged_resume_checkpoint_is_refused(finished_run, tiny_checkpoint, small_data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    damaged("truncated", finished_run / LAST, run / LAST)
    args = run_args(tiny_checkpoint, small_data_dir, "--train.phases=[{epochs: 1, lr: 1e-3}]", "--train.predict_test=false")
    code, err = cli_error(["train", "--out", str(run), "--resume", *args], capsys)
    assert code == 2 and f"{run / LAST}: not a minbert checkpoint" in err


def test_evaluate_takes_a_run_dir_best_or_last(finished_run, small_data_dir, capsys):
    scores = []
    for target in (finished_run, finished_run / BEST, finished_run / LAST):
        assert cli_main(["evaluate", "--checkpoint", str(target), f"--data.dir={small_data_dir}", "--no-progress"]) == 0
        scores.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics.pop("overall_formula").startswith("CS224N") and "ids-sst-train.csv" in metrics.pop("data")
    assert scores[0] == scores[1] == metrics
    assert set(scores[2]) == {"sst", "para", "sts", "overall"}


def test_checkpoint_round_trip(finished_run, tmp_path):
    ckpt = load_checkpoint(finished_run / LAST)
    save_checkpoint(ckpt, tmp_path / "copy.safetensors")
    again = load_checkpoint(tmp_path / "copy.safetensors")
    assert again.config == ckpt.config and again.progress == ckpt.progress and again.scheduler == ckpt.scheduler
    for a, b in ((ckpt.model, again.model), *((x["state"][i], y["state"][i]) for x, y in [(ckpt.optimizer, again.optimizer)]
                                              for i in ckpt.optimizer["state"])):  # fmt: skip
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(ckpt.rng["torch"], again.rng["torch"]) and ckpt.rng["python"] == again.rng["python"]


# ---------------------------------------------------------------------------------------
# A full disk, two writers, divergence


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past `limit` bytes fail with EFBIG, as writes to a full disk fail with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_full_disk_keeps_the_previous_files(finished_run, tmp_path):
    last, preds = tmp_path / LAST, tmp_path / "sts-dev-output.csv"
    shutil.copy(finished_run / LAST, last)
    shutil.copy(finished_run / "sts-dev-output.csv", preds)
    before = {p: p.read_bytes() for p in (last, preds)}
    ckpt = load_checkpoint(last)
    with file_size_limit(1 << 20):
        with pytest.raises(RunError, match=f"{last}: could not write .*File too large.*previous version is intact"):
            save_checkpoint(ckpt, last)
        with pytest.raises(RunError, match="sts-dev-output.csv: could not write"):
            write_predictions(preds, [f"id{i}" for i in range(200_000)], [2.5] * 200_000, BUILTIN["sts"])
    assert {p: p.read_bytes() for p in (last, preds)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LAST, preds.name])  # no temporary files left


def test_two_writers_cannot_share_a_run_directory(tiny_checkpoint, small_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = minbert_python(f"from minbert.training.run_state import RunLock; RunLock({str(out)!r}).__enter__(); "
                            "print('locked', flush=True); import time; time.sleep(120)")  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=f"another minbert run \\(pid {holder.pid}\\)"):
            RunLock(out).__enter__()
        code, err = cli_error(["train", "--out", str(out), *run_args(tiny_checkpoint, small_data_dir)], capsys)
        assert code == 1 and "is writing this directory" in err
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out):  # the killed holder left nothing stuck
        pass


def minbert_python(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


def test_a_finished_run_is_not_overwritten_by_accident(finished_run, tiny_checkpoint, small_data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    args = run_args(tiny_checkpoint, small_data_dir, "--train.phases=[{epochs: 1, lr: 1e-3}]", "--train.predict_test=false")
    code, err = cli_error(["train", "--out", str(run), *args], capsys)
    assert code == 1 and "already holds a run" in err
    assert (run / "metrics.json").read_bytes() == (finished_run / "metrics.json").read_bytes()
    assert cli_main(["train", "--out", str(run), "--overwrite", *args]) == 0


def test_divergence_stops_with_the_step_and_task(tiny_checkpoint, small_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = cli_error(["train", "--out", str(out), *run_args(tiny_checkpoint, small_data_dir, "--train.phases.0.lr=1e3")],
                          capsys)  # fmt: skip
    assert code == 1
    assert "training diverged: the " in err and " loss at step " in err and f"{out / LAST} (step " in err
    last = load_checkpoint(out / LAST)  # the last good checkpoint: whole, finite, resumable
    assert last.progress.step > 0 and all(torch.isfinite(t).all() for t in last.model.values())
    assert not list(out.glob("*-output.csv")) and not (out / "metrics.json").exists()
    stopped_at = int(err.split(" loss at step ")[1].split()[0])
    steps = [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, stopped_at))  # the steps before the bad one are logged, once each


def test_a_truncated_checkpoint_whose_header_length_opens_like_a_pickle_is_called_truncated(tmp_path):
    # A safetensors file opens with its header's length, little-endian: 0x180 starts with 0x80,
    # a pickle's first byte. Cut short, it is still a truncated safetensors file, not a pickle.
    path = tmp_path / "last.safetensors"
    path.write_bytes((0x180).to_bytes(8, "little") + b'{"__metadata__": {"format": "minbert-checkpoint"')
    with pytest.raises(CheckpointError, match=r"not a safetensors file, or a truncated one"):
        load_checkpoint(path)
