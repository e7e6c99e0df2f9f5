"""`minbert reproduce` and runs that continue an earlier model's run (E after D)."""

import json

import torch

from minbert.config import load_config
from minbert.configs import resolve_config
from minbert.training.reproduce import markdown_table, reproduce
from minbert.run_files import load_checkpoint
from minbert.training import TrainOptions, train


def tiny_overrides(tiny_checkpoint, small_data_dir, tmp_path):
    return [f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={tmp_path / 'cache'}",
            "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1", "train.phases.0.epochs=1"]  # fmt: skip


def test_continuing_d_equals_running_e_alone(tiny_checkpoint, small_data_dir, tmp_path):
    o = tiny_overrides(tiny_checkpoint, small_data_dir, tmp_path) + ["train.predict_test=false", "train.phases.0.lr=1e-3"]
    e_overrides = o + ["train.phases.1.epochs=1", "train.phases.1.lr=1e-3"]
    train(load_config(resolve_config("model_d"), o), tmp_path / "D", TrainOptions(progress=False))
    continued = train(load_config(resolve_config("model_e"), e_overrides), tmp_path / "E", TrainOptions(progress=False, init_from=tmp_path / "D"))
    alone = train(load_config(resolve_config("model_e"), e_overrides), tmp_path / "E_alone", TrainOptions(progress=False))
    assert {k: continued[k] for k in ("sst", "para", "sts")} == {k: alone[k] for k in ("sst", "para", "sts")}
    a = load_checkpoint(tmp_path / "E" / "last.safetensors").model
    b = load_checkpoint(tmp_path / "E_alone" / "last.safetensors").model
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads(l) for l in (tmp_path / "E" / "epochs.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["round_robin", "sst_only"]


def test_reproduce_writes_table_and_chart(tiny_checkpoint, small_data_dir, tmp_path):
    out = tmp_path / "rep"
    results = reproduce(out, ["A", "B", "D", "E"], tiny_overrides(tiny_checkpoint, small_data_dir, tmp_path), progress=False)
    assert set(results) == {"A", "B", "D", "E"}
    assert results["E"]["continued_from"] == "D"
    table = (out / "table.md").read_text()
    assert "| A | frozen encoder" in table and "0.428 / 0.364 / 0.729 / 0.016" in table
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "E" / "sst-test-output.csv").exists()
    again = reproduce(out, ["A"], tiny_overrides(tiny_checkpoint, small_data_dir, tmp_path), progress=False)
    assert again["A"] == results["A"]  # done models are not run again


def test_markdown_table_rows():
    row = {"overall": 0.5, "sst": 0.4, "para": 0.7, "sts": 0.2, "wall_s": 120.0, "continued_from": "D"}
    table = markdown_table({"E": row})
    assert "| E | D + sentiment-only epochs | 0.500 / 0.400 / 0.700 / 0.200 | 0.717 / 0.516 / 0.828 / 0.615 | 2.0 min (after D) |" in table
