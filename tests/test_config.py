"""Configs: every shipped file in minbert/configs/ loads and builds; overrides; unknown keys are errors."""

import pytest

from minbert.config import ConfigError, PhaseConfig, load_config, save_config
from minbert.configs import CONFIG_DIR
from minbert.multitask import MultitaskBert
from minbert.model import BertConfig, BertModel

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_configs():
    assert {"main", "best", "seed", "model_a", "model_f"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds(path):
    cfg = load_config(path)
    bert = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    model = MultitaskBert(bert, cfg.model)
    assert set(model.heads) == {"sst", "para", "sts"}


def test_dotted_overrides():
    cfg = load_config(None, ["train.seed=3", "model.pooling=mean", "train.phases.0.lr=2e-5",
                             "train.phases.0.tasks=[sst]", "data.max_train_examples=null"])  # fmt: skip
    assert cfg.train.seed == 3 and cfg.model.pooling == "mean"
    assert cfg.train.phases[0].lr == 2e-5 and cfg.train.phases[0].tasks == ["sst"]
    assert isinstance(cfg.train.phases[0], PhaseConfig)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.sed=3", "unknown config key"),
        ("nothing.here=1", "unknown config key 'nothing'"),
        ("train.phases.5.lr=1", "not an index"),
        ("train.seed=abc", "train.seed: expected int"),
        ("model.pooling=max", "model.pooling: 'max' is not one of"),
        ("train.phases.0.tasks=[sst, nli]", "must be a non-empty subset"),
        ("train.phases=[{lr: 1e-5, epoch: 2}]", "unknown config key"),
        ("no_equals_sign", "not of the form"),
    ],
)
def test_bad_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.seed=5", "train.phases.0.epochs=4"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
