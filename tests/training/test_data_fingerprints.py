"""A run knows its data: the fingerprint (size, line breaks, sha256) of every file it reads is in
data.json, its checkpoints, metrics.json and its exports; --resume and --init-from refuse data
that changed, naming the file and what changed, and change no file of the run; with
data.allow_changed=true they go on and say so in the run's logs. Old checkpoints without
fingerprints still resume."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from minbert.cli import main as cli_main
from minbert.cli import resolve_config
from minbert.config import load_config
from minbert.run_files import BEST, LAST, load_checkpoint, save_checkpoint
from minbert.tasks.data import DataError, data_changes, fingerprint
from minbert.training import TrainOptions, train

TWO_EPOCHS = "train.phases=[{epochs: 2, lr: 1e-3}]"


def overrides(tiny_checkpoint: Path, data: Path, phases: str = TWO_EPOCHS) -> list[str]:
    return [f"model.checkpoint={tiny_checkpoint}", f"data.dir={data}", "train.batch_size=8", "train.eval_batch_size=16",
            "train.threads=1", phases]  # fmt: skip


def cli_train(out: Path, settings: list[str], *extra: str) -> int:
    """`minbert train --out OUT --no-progress --KEY=VALUE...` in this process (the main config)."""
    return cli_main(["train", "--out", str(out), "--no-progress", *(f"--{s}" for s in settings), *extra])


@pytest.fixture
def stopped(tiny_checkpoint, small_data_dir, tmp_path) -> tuple[Path, Path, list[str]]:
    """(run directory, its own copy of the small data, the run's settings): a run of the main
    config stopped after the first of its two epochs, as an interruption would."""
    data, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(small_data_dir, data)
    settings = overrides(tiny_checkpoint, data)
    assert train(load_config(resolve_config(None), settings), out, TrainOptions(progress=False, stop_after_epochs=1)) == {}
    return out, data, settings


def halve_rows(path: Path) -> None:
    """Keep the header and the first half of the rows."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[: 1 + (len(lines) - 1) // 2]), encoding="utf-8")


def run_files(out: Path) -> dict[str, bytes]:
    """Every file of a run directory but its lock (which holds the pid of the last process)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != ".lock"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# The fingerprint and the comparison


def test_fingerprint_is_size_lines_and_sha256(small_data_dir, tmp_path):
    path = small_data_dir / "quora-train.csv"
    assert fingerprint(path) == {"bytes": path.stat().st_size, "lines": path.read_bytes().count(b"\n"),
                                 "sha256": sha256(path)}  # fmt: skip
    with pytest.raises(DataError, match="no-such.csv: file not found"):
        fingerprint(tmp_path / "no-such.csv")


def test_data_changes_say_what_changed_in_which_file(tmp_path):
    was = {"a.csv": {"bytes": 1000, "lines": 10, "sha256": "1" * 64}, "b.csv": {"bytes": 5, "lines": 1, "sha256": "2" * 64},
           "gone.csv": {"bytes": 1, "lines": 1, "sha256": "3" * 64}}  # fmt: skip
    now = {"a.csv": {"bytes": 500, "lines": 5, "sha256": "4" * 64}, "b.csv": {"bytes": 5, "lines": 1, "sha256": "5" * 64},
           "new.csv": {"bytes": 1, "lines": 1, "sha256": "6" * 64}}  # fmt: skip
    assert data_changes(was, now, tmp_path) == [
        f"{tmp_path}/a.csv: 10 -> 5 lines, 1,000 -> 500 bytes",
        f"{tmp_path}/b.csv: content changed, same size (sha256 222222222222... -> 555555555555...)",
        f"{tmp_path}/new.csv: newly read", f"{tmp_path}/gone.csv: no longer read"]  # fmt: skip
    assert len(data_changes(was, now, tmp_path, common_only=True)) == 2  # --init-from: only the files both read
    assert data_changes(was, was, tmp_path) == []


# ---------------------------------------------------------------------------------------
# --resume


def test_resume_refuses_removed_rows_and_changes_nothing(stopped, capsys):
    out, data, settings = stopped
    recorded = json.loads((out / "data.json").read_text())
    assert recorded == load_checkpoint(out / LAST).data == load_checkpoint(out / BEST).data
    assert recorded["ids-sst-train.csv"] == fingerprint(data / "ids-sst-train.csv")
    halve_rows(data / "ids-sst-train.csv")
    before = run_files(out)
    capsys.readouterr()
    assert cli_train(out, settings, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"minbert: error: {out / LAST}: the run's data changed since it started: ") and "\n" not in err
    assert f"{data / 'ids-sst-train.csv'}: 49 -> 25 lines, " in err and "--data.allow_changed=true" in err
    assert run_files(out) == before  # a refused resume changes no file


def test_resume_refuses_one_changed_character_naming_sha256(stopped, capsys):
    out, data, settings = stopped
    path = data / "ids-sst-train.csv"
    was, text = sha256(path), path.read_bytes()
    path.write_bytes(text.replace(b"good", b"Good", 1))
    assert path.stat().st_size == len(text)
    before = run_files(out)
    capsys.readouterr()
    assert cli_train(out, settings, "--resume") == 2
    err = capsys.readouterr().err
    assert f"{path}: content changed, same size (sha256 {was[:12]}... -> {sha256(path)[:12]}...)" in err
    assert run_files(out) == before


def test_allow_changed_goes_on_and_notes_it(stopped, capsys):
    out, data, settings = stopped
    halve_rows(data / "ids-sst-train.csv")
    capsys.readouterr()
    assert cli_train(out, settings, "--resume", "--data.allow_changed=true") == 0
    said = capsys.readouterr().out
    assert f"{out / LAST}: the run's data changed since it started: {data / 'ids-sst-train.csv'}: 49 -> 25 lines" in said
    assert f"going on with the new data (data.allow_changed=true), noted in {out / 'events.jsonl'}" in said
    [event] = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert event["event"] == "data_changed" and event["step"] == 18 and "49 -> 25 lines" in event["changes"][0]
    # the new fingerprints are the recorded ones, everywhere, and they are the files' own
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == json.loads((out / "data.json").read_text()) == load_checkpoint(out / LAST).data
    assert {k: v["sha256"] for k, v in metrics["data"].items()} == {k: sha256(data / k) for k in metrics["data"]}
    assert cli_train(out, settings, "--overwrite") == 0 and not (out / "events.jsonl").exists()  # a fresh run's own


def test_run_stopped_before_its_first_checkpoint_checks_data_json(stopped, capsys):
    out, data, settings = stopped
    for name in (LAST, BEST):
        (out / name).unlink()  # as if killed before the first checkpoint: config.yaml and data.json remain
    halve_rows(data / "sts-train.csv")
    capsys.readouterr()
    assert cli_train(out, settings, "--resume") == 2
    assert f"{out / 'data.json'}: the run's data changed since it started: {data / 'sts-train.csv'}: " in capsys.readouterr().err


def test_old_checkpoint_without_fingerprints_still_resumes(stopped, capsys):
    out, _, settings = stopped
    ckpt = load_checkpoint(out / LAST)
    ckpt.data = None  # as an older minbert wrote it
    save_checkpoint(ckpt, out / LAST)
    (out / "data.json").unlink()
    capsys.readouterr()
    assert cli_train(out, settings, "--resume") == 0
    assert f"{out / LAST}: holds no fingerprints of the run's data (an older minbert's): the data cannot be checked" \
        in capsys.readouterr().out  # fmt: skip
    assert load_checkpoint(out / LAST).data == json.loads((out / "data.json").read_text())  # recorded from here


# ---------------------------------------------------------------------------------------
# --init-from, and exports


def test_init_from_refuses_changed_data_and_exports_carry_fingerprints(tiny_checkpoint, small_data_dir, tmp_path, capsys):
    pytest.importorskip("onnx")
    from minbert.inference.export import export_checkpoint
    from minbert.inference.manifest import read_manifest

    data, first = tmp_path / "data", tmp_path / "first"
    shutil.copytree(small_data_dir, data)
    one = overrides(tiny_checkpoint, data, "train.phases=[{epochs: 1, lr: 1e-3}]")
    assert cli_train(first, one) == 0
    recorded = json.loads((first / "metrics.json").read_text())["data"]
    assert {k: v["sha256"] for k, v in recorded.items()} == {k: sha256(data / k) for k in recorded}
    for fmt in ("hf", "onnx"):
        export_checkpoint(first, tmp_path / fmt, fmt, check=False)
        assert read_manifest(tmp_path / fmt).data == recorded, fmt
    # the second run continues the first with an SST-only phase; the first's data changed since
    halve_rows(data / "ids-sst-train.csv")
    two = overrides(tiny_checkpoint, data, "train.phases=[{epochs: 1, lr: 1e-3}, {tasks: [sst], epochs: 1, lr: 1e-3}]")
    capsys.readouterr()
    assert cli_train(tmp_path / "second", two, "--init-from", str(first)) == 2
    err = capsys.readouterr().err
    assert f"{first / LAST}: this run's data differs from the data of the run it continues: " in err
    assert f"{data / 'ids-sst-train.csv'}: 49 -> 25 lines" in err and run_files(tmp_path / "second") == {}


def test_every_file_read_is_fingerprinted_once(small_data_dir, tmp_path):
    from minbert.runs import data_fingerprints, needed_splits

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "train-soft-sst.jsonl").write_text('{"id": "x", "soft": [0.2, 0.2, 0.2, 0.2, 0.2]}\n')
    cfg = load_config(None, [f"data.dir={small_data_dir}", "data.sst_phrases=true", f"train.distill_from={teacher}",
                             "train.phases=[{tasks: [sst, sst_phrases, sts]}]", "train.predict_test=false"])  # fmt: skip
    files = data_fingerprints(cfg, needed_splits(cfg))
    assert list(files) == ["ids-sst-train.csv", "sst-trees-train.txt", "sts-train.csv", "ids-sst-dev.csv",
                           "quora-dev.csv", "sts-dev.csv", str(teacher / "train-soft-sst.jsonl")]  # fmt: skip
    assert all(v["sha256"] == sha256(Path(small_data_dir) / k) for k, v in files.items())
