"""Frozen-encoder training on cached vectors: reused, invalidated, and equal to the uncached path."""

import csv

import pytest
import torch

from minbert.config import load_config
from minbert.training.features import FrozenFeatures
from minbert.runs import build_model, encode_all, read_all
from minbert.training import TrainOptions, train


def frozen_config(checkpoint, data_dir, cache_dir, *extra):
    return load_config(None, [
        f"model.checkpoint={checkpoint}", f"data.dir={data_dir}", f"data.cache_dir={cache_dir}",
        "model.sentiment_head=linear", "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1",
        "train.phases=[{tasks: [sst, para, sts], epochs: 3, lr: 1e-2, mode: frozen}]",
        *extra,
    ])  # fmt: skip


def feature_hits(cfg) -> int:
    model, tokenizer = build_model(cfg)
    data = encode_all(read_all(cfg, {"train": ("sst", "para", "sts"), "dev": ("sst", "para", "sts")}), tokenizer, cfg)
    return FrozenFeatures(model, data, cfg, "cpu").hits


def test_cache_reused_then_invalidated(tiny_checkpoint, small_data_dir, tmp_path, embedded_dir):
    from conftest import make_hf_checkpoint

    cache = tmp_path / "cache"
    cfg = frozen_config(tiny_checkpoint, small_data_dir, cache)
    assert feature_hits(cfg) == 0  # first run encodes and stores all six task splits
    assert feature_hits(cfg) == 6  # second run reads them all back

    other_ckpt = make_hf_checkpoint(tmp_path / "other_bert", embedded_dir / "vocab.txt", num_hidden_layers=1)
    assert feature_hits(frozen_config(other_ckpt, small_data_dir, cache)) == 0  # new checkpoint: all new

    changed = tmp_path / "changed_data"
    changed.mkdir()
    for f in small_data_dir.iterdir():
        (changed / f.name).write_text(f.read_text())
    rows = (changed / "ids-sst-train.csv").read_text().splitlines(keepends=True)
    rows[1] = rows[1].replace("Rock", "Stone")  # one sentence of one file changes
    (changed / "ids-sst-train.csv").write_text("".join(rows))
    assert feature_hits(frozen_config(tiny_checkpoint, changed, cache)) == 5  # only sst-train re-encoded


def test_cached_training_equals_uncached(tiny_checkpoint, small_data_dir, tmp_path):
    cached = train(frozen_config(tiny_checkpoint, small_data_dir, tmp_path / "c"), tmp_path / "cached", TrainOptions(progress=False))
    plain = train(frozen_config(tiny_checkpoint, small_data_dir, tmp_path / "c", "train.cache_features=false"), tmp_path / "plain", TrainOptions(progress=False))  # fmt: skip
    for key in ("sst", "para", "sts"):
        assert cached[key] == pytest.approx(plain[key], abs=1e-3)
    for name in ("sst-dev-output.csv", "para-test-output.csv", "sts-test-output.csv"):
        a = list(csv.reader((tmp_path / "cached" / name).open()))
        b = list(csv.reader((tmp_path / "plain" / name).open()))
        assert [r[0] for r in a] == [r[0] for r in b]
        if name.startswith("sts"):
            assert [float(r[1]) for r in a[1:]] == pytest.approx([float(r[1]) for r in b[1:]], abs=1e-3)
        else:
            assert a == b
    # the encoder did not move
    from minbert.run_files import load_checkpoint

    enc = load_checkpoint(tmp_path / "cached").model
    from minbert.checkpoint import load_pretrained

    ref = load_pretrained(tiny_checkpoint).state_dict()
    for name, t in ref.items():
        torch.testing.assert_close(enc["bert." + name], t, rtol=0, atol=0)


def test_an_mlm_phase_then_a_frozen_phase_on_cached_vectors(tiny_checkpoint, small_data_dir, tmp_path):
    """The MLM phase's sentences (data["train"]["mlm"]) are not a task: the frozen phase caches
    the tasks' vectors only (this crashed: 'MaskedLMTask' object has no attribute 'sides')."""
    cfg = frozen_config(tiny_checkpoint, small_data_dir, tmp_path / "c", "train.predict_test=false",
        "train.phases=[{name: mlm, tasks: [sst, para], mode: mlm, epochs: 1, steps_per_epoch: 3, lr: 1e-3},"
        " {name: heads, tasks: [sst, para, sts], mode: frozen, epochs: 1, lr: 1e-2}]")  # fmt: skip
    got = train(cfg, tmp_path / "run", TrainOptions(progress=False))
    assert all(0 <= got[k] <= 1 for k in ("sst", "para")) and -1 <= got["sts"] <= 1
    assert sum(1 for _ in (tmp_path / "c").rglob("*.safetensors")) == 6  # the tasks' train and dev splits, no more
