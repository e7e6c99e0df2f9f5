"""Pictures of a run: curves.png at the end of training and from `minbert plot`, the dev pictures
from `minbert evaluate`, TensorBoard scalars, and the numbers behind each picture."""

import json

import numpy as np
import pytest

from minbert.cli import main as cli_main
from minbert.config import load_config
from minbert.reports import plots
from minbert.reports.plots import (confusion_matrix, curve_data, draw_curves, draw_or_explain, rolling_mean,
                                   row_normalised, smoothing_window, threshold_accuracy)  # fmt: skip
from minbert.training import TrainOptions, train

PICTURES = ("sst-confusion.png", "sts-scatter.png", "para-threshold.png")


def tiny_config(tiny_checkpoint, small_data_dir, tmp_path, *extra):
    return load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={tmp_path / 'cache'}",
        "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1", "train.predict_test=false",
        "train.log_every_steps=4",
        ("train.phases=[{name: rr, tasks: [sst, para, sts], epochs: 2, lr: 2e-3},"
         " {name: sst_only, tasks: [sst], epochs: 1, lr: 1e-3}]"),
        *extra,
    ])  # fmt: skip


def assert_png(path, width=None, height=None):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    h, w = matplotlib.image.imread(path).shape[:2]
    assert w >= 600 and h >= 400, (path, w, h)
    if width:
        assert (w, h) == (width, height), (path, w, h)


def test_train_draws_curves_and_evaluate_draws_dev_pictures(tiny_checkpoint, small_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(tiny_checkpoint, small_data_dir, tmp_path), out, TrainOptions(progress=False))
    assert_png(out / "curves.png", 1575, 780)  # 10.5 x 5.2 inches at 150 dpi
    c = curve_data(out)
    assert [(p.name, p.start) for p in c.phases] == [("rr", 0), ("sst_only", c.phases[0].end)]
    assert set(c.losses) == {"sst", "para", "sts"} and len(c.epochs) == 3
    assert c.best is not None and c.best["best"]

    (out / "curves.png").unlink()
    assert cli_main(["plot", str(out)]) == 0  # redrawn; no dev outputs yet, so only the curves
    assert_png(out / "curves.png", 1575, 780)
    assert not (out / "sst-confusion.png").exists()

    capsys.readouterr()
    assert cli_main(["evaluate", "--checkpoint", str(out), "--no-progress", f"--data.dir={small_data_dir}"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["overall"] == pytest.approx(json.loads((out / "metrics.json").read_text())["overall"], abs=1e-4)
    for name in PICTURES:
        assert_png(out / name)
    outputs = json.loads((out / "dev-outputs.json").read_text())
    assert len(outputs["sst"]["ids"]) == len(outputs["sst"]["gold"]) == len(outputs["sst"]["soft"]) == 48
    for probs, pred in zip(outputs["sst"]["soft"], outputs["sst"]["prediction"]):
        assert sum(probs) == pytest.approx(1, abs=1e-4) and int(pred) == int(np.argmax(probs))
    assert all((p > 0.5) == (pred == 1) for p, pred in zip(outputs["para"]["soft"], outputs["para"]["prediction"]))
    assert outputs["sts"]["soft"] == pytest.approx(outputs["sts"]["prediction"], abs=1e-4)

    elsewhere = tmp_path / "pictures"
    assert cli_main(["evaluate", "--checkpoint", str(out / "best.safetensors"), "--plots", str(elsewhere),
                     f"--data.dir={small_data_dir}"]) == 0  # fmt: skip
    assert all((elsewhere / name).exists() for name in PICTURES)
    for name in PICTURES:
        (out / name).unlink()
    assert cli_main(["plot", str(out)]) == 0  # dev-outputs.json in the run directory: all four again
    assert all((out / name).exists() for name in (*PICTURES, "curves.png"))


def test_one_epoch_run_and_a_missing_matplotlib(tiny_checkpoint, small_data_dir, tmp_path, monkeypatch, capsys):
    def no_matplotlib():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(plots, "pyplot", no_matplotlib)
    one_epoch = "train.phases=[{tasks: [sst, para, sts], epochs: 1, lr: 1e-3}]"
    cfg = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, one_epoch)
    out = tmp_path / "run"
    scores = train(cfg, out, TrainOptions(progress=False))  # the picture is not drawn; the run is not failed
    assert "overall" in scores and (out / "metrics.json").exists() and not (out / "curves.png").exists()
    assert "curves.png: not drawn, matplotlib is not installed" in capsys.readouterr().out
    assert cli_main(["plot", str(out)]) == 1
    monkeypatch.undo()

    c = curve_data(out)
    assert len(c.epochs) == 1 and [p.name for p in c.phases] == ["multitask"] and c.best == c.epochs[0]
    assert_png(draw_curves(out))
    assert cli_main(["plot", str(tmp_path / "nothing")]) == 2


def test_resumed_run_with_tensorboard(tiny_checkpoint, small_data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "train.tensorboard=true",
                      "train.checkpoint_every_steps=5")
    out = tmp_path / "run"
    train(cfg, out, TrainOptions(progress=False, stop_after_epochs=1))
    assert_png(draw_curves(out))  # an unfinished run draws too
    # As if killed after logging steps past its checkpoint: the resumed run hides them.
    with (out / "steps.jsonl").open("a") as f:
        f.write(json.dumps({"step": 10_000, "task": "sst", "loss": 9.0, "lr": 0.1}) + "\n")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as stale:
        stale.add_scalar("train_loss/sst", 9.0, 10_000)
    train(cfg, out, TrainOptions(progress=False, resume=True))  # cuts the log back to the checkpoint, then goes on
    assert_png(out / "curves.png")
    c = curve_data(out)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert sum(len(t.steps) for t in c.losses.values()) == len(steps)
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train_loss/sst", "train_loss/para", "train_loss/sts", "lr", "dev/overall", "dev/sst"} <= set(tags)
    for task in ("sst", "para", "sts"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train_loss/{task}")]
        assert logged == [(s["step"], pytest.approx(s["loss"], abs=1e-4)) for s in steps if s["task"] == task]
    assert [e.step for e in events.Scalars("lr")] == [s["step"] for s in steps]
    dev = [(e.step, e.value) for e in events.Scalars("dev/overall")]
    assert dev == [(r["step"], pytest.approx(r["dev"]["overall"], abs=1e-5)) for r in epochs]


def test_tensorboard_off_by_default(tiny_runs):
    assert load_config(None, []).train.tensorboard is False
    for run in tiny_runs.values():  # runs without the switch write no TensorBoard files
        assert (run / "steps.jsonl").is_file() and not (run / "tensorboard").exists()


def test_curve_data_phases_and_a_step_logged_twice(tmp_path):
    # Phase "multi": steps 1-40 alternate sst and para; phase "sst_only": steps 41-60.
    rows = [{"step": s, "task": "sst" if s % 2 or s > 40 else "para", "loss": 1.0 + s / 100, "lr": 1e-3}
            for s in range(1, 61)]  # fmt: skip
    rows.insert(5, {**rows[4], "loss": 9.0})  # step 5 logged twice (a resumed run): the later line counts
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 61, "ta')  # cut short
    dev = {"sst": 0.3, "para": 0.6, "sts": 0.1, "overall": 0.45}
    epochs = [{"phase": "multi", "phase_index": 0, "epoch": 1, "step": 40, "dev": dev, "best": True},
              {"phase": "sst_only", "phase_index": 1, "epoch": 1, "step": 60, "dev": dev}]  # fmt: skip
    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [epochs[0], *epochs]))
    c = curve_data(tmp_path)
    sst = c.losses["sst"]
    assert len(sst.steps) == 40 and sst.loss[2] == 9.0 and len(c.epochs) == 2 and c.best == epochs[0]
    assert [(p.name, p.start, p.end) for p in c.phases] == [("multi", 0, 40), ("sst_only", 40, 60)]
    assert sst.phase.tolist() == [0] * 20 + [1] * 20 and c.losses["para"].phase.tolist() == [0] * 20
    assert c.window == 2  # 40 losses of sst
    assert sst.smoothed[20] == sst.loss[20]  # the mean starts again in a new phase
    assert sst.smoothed[21] == pytest.approx((sst.loss[20] + sst.loss[21]) / 2)
    assert_png(draw_curves(tmp_path))
    # In-epoch probes (evals.jsonl): drawn too; one scored on the full dev sets and kept is the best.
    probes = [{"step": 20, "probe": dev}, {"step": 50, "probe": dev, "dev": {**dev, "overall": 0.5}, "best": True}]
    (tmp_path / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probes))
    c = curve_data(tmp_path)
    assert c.probes == probes and c.best == probes[1]
    assert_png(draw_curves(tmp_path))


def test_curves_of_a_run_whose_tasks_are_not_the_builtin_three(tmp_path):
    # A run of one task from configs/tasks/ (CFIMDB, say): its dev score is drawn under its own name.
    rows = [{"step": s, "task": "cfimdb", "loss": 0.7 - s / 100, "lr": 1e-3} for s in range(1, 21)]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    epochs = [{"phase": "cfimdb", "phase_index": 0, "epoch": e, "step": 10 * e,
               "dev": {"cfimdb": 0.8 + e / 100, "overall": 0.8 + e / 100}, "best": e == 2} for e in (1, 2)]  # fmt: skip
    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    assert [line[0] for line in plots.dev_lines(epochs)] == ["overall", "cfimdb"]
    assert_png(draw_curves(tmp_path))
    mixed = [{"dev": {"overall": 0.5, "sts": 0.2, "sst": 0.4, "cfimdb": 0.9}}]
    assert [line[0] for line in plots.dev_lines(mixed)] == ["overall", "sst", "sts", "cfimdb"]


def test_rolling_mean_and_window():
    assert rolling_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    assert rolling_mean(np.array([2.0, 4.0]), 5).tolist() == [2.0, 3.0]
    assert [smoothing_window(n) for n in (1, 25, 200, 700, 5000)] == [1, 2, 20, 50, 100]


def test_confusion_matrix_rows_are_shares_of_the_gold_class():
    gold, pred = [0, 0, 1, 1, 1, 4], [0, 1, 1, 1, 2, 0]
    counts = confusion_matrix(gold, pred, 5)
    assert counts[0].tolist() == [1, 1, 0, 0, 0] and counts[1].tolist() == [0, 2, 1, 0, 0] and counts.sum() == 6
    shares = row_normalised(counts)
    assert shares.sum(axis=1).tolist() == pytest.approx([1, 1, 0, 0, 1])  # gold classes 2 and 3: no examples
    assert shares[1].tolist() == pytest.approx([0, 2 / 3, 1 / 3, 0, 0])


def test_threshold_accuracy():
    gold, prob = [1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1]
    assert threshold_accuracy(gold, prob, [0.0, 0.3, 0.5, 0.95]).tolist() == [0.5, 0.75, 0.5, 0.5]


def test_draw_or_explain_never_raises(capsys):
    assert draw_or_explain("x.png", lambda: 1) is True
    assert draw_or_explain("x.png", lambda: 1 / 0) is False
    assert "x.png: not drawn (ZeroDivisionError" in capsys.readouterr().out
