"""End to end on a tiny random BERT and a 48-row slice of each data file: the loss falls, all
six prediction files are written in the stated format, and resuming reproduces a run."""

import json

import pytest
import torch

from minbert.cli import main as cli_main
from minbert.config import load_config
from minbert.run_files import load_checkpoint
from minbert.training import TrainOptions, train


def tiny_config(tiny_checkpoint, small_data_dir, tmp_path, *extra):
    return load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={tmp_path / 'cache'}",
        "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1",
        "train.phases=[{name: rr, tasks: [sst, para, sts], epochs: 2, lr: 2e-3},"
        " {name: sst_only, tasks: [sst], epochs: 1, lr: 1e-3}]",
        *extra,
    ])  # fmt: skip


def test_loss_falls(tiny_checkpoint, small_data_dir, tmp_path):
    cfg = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "train.predict_test=false", "train.eval_every_epoch=false",
                      "train.phases=[{tasks: [sst, para, sts], epochs: 12, lr: 3e-3}]")  # fmt: skip
    train(cfg, tmp_path / "run", TrainOptions(progress=False))
    history = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    total = lambda losses: sum(losses.values())  # noqa: E731
    assert total(last) < 0.8 * total(first), (first, last)


def test_run_writes_everything_in_format(tiny_checkpoint, small_data_dir, tmp_path, data_dir):
    from conftest import check_prediction_files

    out = tmp_path / "run"
    scores = train(tiny_config(tiny_checkpoint, small_data_dir, tmp_path), out, TrainOptions(progress=False))
    assert {"config.yaml", "steps.jsonl", "epochs.jsonl", "best.safetensors", "last.safetensors", "metrics.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"sst", "para", "sts", "overall"} <= set(metrics)
    assert metrics["overall"] == pytest.approx((metrics["sst"] + metrics["para"] + (metrics["sts"] + 1) / 2) / 3, abs=2e-4)
    assert scores["overall"] == metrics["overall"]
    check_prediction_files(out, small_data_dir)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["task"] for s in steps[:3]] == ["sst", "para", "sts"]


def test_resume_gives_the_same_result(tiny_checkpoint, small_data_dir, tmp_path):
    cfg = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "train.predict_test=false")
    full = train(cfg, tmp_path / "full", TrainOptions(progress=False))
    assert train(cfg, tmp_path / "cut", TrainOptions(progress=False, stop_after_epochs=1)) == {}  # stopped mid-phase
    assert train(cfg, tmp_path / "cut", TrainOptions(progress=False, resume=True, stop_after_epochs=1)) == {}  # across phases
    resumed = train(cfg, tmp_path / "cut", TrainOptions(progress=False, resume=True))
    assert {k: v for k, v in resumed.items() if k != "train_wall_s"} == {k: v for k, v in full.items() if k != "train_wall_s"}
    a = load_checkpoint(tmp_path / "full" / "last.safetensors").model
    b = load_checkpoint(tmp_path / "cut" / "last.safetensors").model
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "full" / "steps.jsonl").read_text() == (tmp_path / "cut" / "steps.jsonl").read_text()


def test_resume_refuses_a_different_config(tiny_checkpoint, small_data_dir, tmp_path):
    cfg = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "train.predict_test=false")
    train(cfg, tmp_path / "run", TrainOptions(progress=False, stop_after_epochs=1))
    other = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "train.predict_test=false", "train.seed=1")
    with pytest.raises(ValueError, match="different config"):
        train(other, tmp_path / "run", TrainOptions(progress=False, resume=True))


def test_bad_data_stops_before_training(tiny_checkpoint, small_data_dir, tmp_path):
    bad = tmp_path / "bad_data"
    bad.mkdir()
    for f in small_data_dir.iterdir():
        (bad / f.name).write_text(f.read_text())
    (bad / "sts-dev.csv").write_text("\tid\tsentence1\tsentence2\tsimilarity\n0\ta\tx\ty\t9\n")
    cfg = tiny_config(tiny_checkpoint, bad, tmp_path)
    from minbert.tasks.data import DataError

    with pytest.raises(DataError, match="sts-dev.csv:2: bad similarity"):
        train(cfg, tmp_path / "run", TrainOptions(progress=False))
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_cli_train_evaluate_predict(tiny_checkpoint, small_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--no-progress", f"--model={tiny_checkpoint}", f"--data.dir={small_data_dir}", "--train.batch_size=8",
            "--train.phases=[{epochs: 1, lr: 1e-3}]"]  # fmt: skip
    assert cli_main(["train", "--out", str(out), *args]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert cli_main(["evaluate", "--checkpoint", str(out), "--no-progress", f"--data.dir={small_data_dir}"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["overall"] == pytest.approx(trained["overall"], abs=1e-4)
    pred_dir = tmp_path / "pred"
    assert cli_main(["predict-files", "--checkpoint", str(out), "--out", str(pred_dir), f"--data.dir={small_data_dir}"]) == 0
    for name in ("sst-dev-output.csv", "para-test-output.csv", "sts-test-output.csv"):
        assert (pred_dir / name).read_text() == (out / name).read_text()
    assert cli_main(["train", "--out", str(out), "--train.nope=1"]) == 2


def test_beyond_seed_switches_together(tiny_checkpoint, small_data_dir, tmp_path):
    """MLM pre-training, cross-encoded pairs, mean pooling, SST phrases, annealed sampling,
    warm-up and decay, layer-wise lr decay, head lr and CoSENT in one run; then resume."""
    cfg = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "train.predict_test=false",
        "model.pair_encoding=cross", "model.pooling=mean", "data.sst_phrases=true", "train.sts_loss=mse+cosent",
        "train.phases=[{name: mlm, tasks: [sst, para, sts], mode: mlm, epochs: 1, steps_per_epoch: 6, lr: 1e-3},"
        " {name: multi, sampler: annealed, epochs: 2, steps_per_epoch: 12, lr: 1e-3, head_lr: 3e-3,"
        "  warmup_ratio: 0.2, decay: linear, layer_lr_decay: 0.8}]")  # fmt: skip
    full = train(cfg, tmp_path / "full", TrainOptions(progress=False))
    steps = [json.loads(l) for l in (tmp_path / "full" / "steps.jsonl").read_text().splitlines()]
    assert [s["task"] for s in steps[:6]] == ["mlm"] * 6 and len(steps) == 6 + 24
    assert steps[-1]["lr"] < steps[10]["lr"]  # decayed
    train(cfg, tmp_path / "cut", TrainOptions(progress=False, stop_after_epochs=1))  # after the MLM phase
    resumed = train(cfg, tmp_path / "cut", TrainOptions(progress=False, resume=True))
    assert {k: resumed[k] for k in ("sst", "para", "sts")} == {k: full[k] for k in ("sst", "para", "sts")}


def test_probes_inside_epochs_change_nothing_but_the_kept_checkpoint(tiny_checkpoint, small_data_dir, tmp_path):
    """eval_every_steps: probe records every N steps (not at epoch ends), full-dev scores where a
    probe beats the best so far; training itself (the step losses) is the same as without."""
    phases = "train.phases=[{name: rr, tasks: [sst, para, sts], epochs: 2, lr: 2e-3, eval_every_steps: EVERY}]"
    plain = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "train.predict_test=false", phases.replace(", eval_every_steps: EVERY", ""))
    probed = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "train.predict_test=false", "train.eval_subset=10",
                         phases.replace("EVERY", "2"))  # fmt: skip
    train(plain, tmp_path / "plain", TrainOptions(progress=False))
    train(probed, tmp_path / "probed", TrainOptions(progress=False))
    assert (tmp_path / "plain" / "steps.jsonl").read_text() == (tmp_path / "probed" / "steps.jsonl").read_text()
    epochs = [json.loads(line) for line in (tmp_path / "probed" / "epochs.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (tmp_path / "probed" / "evals.jsonl").read_text().splitlines()]
    ends = {e["step"] for e in epochs}
    per_epoch = epochs[0]["step"]
    assert [r["step"] for r in records] == [s for s in range(2, 2 * per_epoch, 2) if s not in ends]
    assert all(set(r["probe"]) >= {"sst", "para", "sts", "overall"} for r in records)
    # Full-dev scores exactly where a probe beat every earlier probe (the first always does).
    running = [max(r["probe"]["overall"] for r in records[: i + 1]) for i in range(len(records))]
    assert ["dev" in r for r in records] == [i == 0 or running[i] > running[i - 1] for i in range(len(records))]
    assert records[0].get("best") is True
    best_seen = max(r["dev"]["overall"] for r in [*records, *epochs] if "dev" in r)
    kept = load_checkpoint(tmp_path / "probed" / "best.safetensors").dev["overall"]
    assert kept == best_seen
    assert kept >= load_checkpoint(tmp_path / "plain" / "best.safetensors").dev["overall"]


def test_dev_probe_is_a_fixed_subset(tiny_checkpoint, small_data_dir, tmp_path):
    from minbert.runs import build_model, needed_splits, read_all
    from minbert.training.probes import dev_probe

    cfg = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "train.eval_subset=5")
    raw = read_all(cfg, needed_splits(cfg))["dev"]
    _, tokenizer = build_model(cfg)
    a, b = dev_probe(raw, tokenizer, cfg), dev_probe(raw, tokenizer, cfg)
    assert {t: len(d) for t, d in a.items()} == {"sst": 5, "para": 5, "sts": 5}
    assert all(a[t].ids == b[t].ids and set(a[t].ids) <= {e.id for e in raw[t]} for t in a)
    cfg.train.eval_subset = None
    assert {t: len(d) for t, d in dev_probe(raw, tokenizer, cfg).items()} == {t: len(v) for t, v in raw.items()}
