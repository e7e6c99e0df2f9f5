"""Shared fixtures: the shared data directory, a tiny random BERT checkpoint, a small data slice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from minbert.checkpoint import default_checkpoint_dir
from minbert.data import default_data_dir

DATA_FILES = [
    "ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv",
    "quora-train.csv", "quora-dev.csv", "quora-test-student.csv",
    "sts-train.csv", "sts-dev.csv", "sts-test-student.csv",
]  # fmt: skip


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = default_data_dir()
    if found is None:
        pytest.fail("../shared/data not found: the tests read the shared data files")
    return found


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    return default_checkpoint_dir()


def make_hf_checkpoint(path: Path, vocab_file: Path, **overrides) -> Path:
    """A random-initialised Hugging Face BertModel saved as a checkpoint directory."""
    from transformers import BertConfig as HFConfig
    from transformers import BertModel as HFBert

    torch.manual_seed(0)
    n_vocab = sum(1 for _ in vocab_file.open(encoding="utf-8"))
    settings = dict(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    settings.update(overrides)
    model = HFBert(HFConfig(**settings))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    shutil.copy(vocab_file, path / "vocab.txt")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, embedded_dir) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("tiny_bert"), embedded_dir / "vocab.txt")


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, data_dir) -> Path:
    """The first 48 rows of each shared file: the real formats, a size that trains in seconds."""
    out = tmp_path_factory.mktemp("small_data")
    for name in DATA_FILES:
        lines = (data_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (out / name).write_text("".join(lines[:49]), encoding="utf-8")
    trees = (data_dir / "sst-trees-train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "sst-trees-train.txt").write_text("".join(trees[:48]), encoding="utf-8")
    return out
