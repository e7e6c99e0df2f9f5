"""Configs: every shipped file in minbert/configs/ loads and builds; overrides; unknown keys are errors."""

import re

import pytest

from minbert.config import RULES, ConfigError, PhaseConfig, load_config, save_config
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
        ("train.sed=3", "unknown config key 'train.sed' \\(did you mean: 'seed'\\?\\)"),
        ("nothing.here=1", "unknown config key 'nothing'"),
        ("train.phases.5.lr=1", "not an index"),
        ("train.seed=abc", "train.seed: Value 'abc' of type 'str' could not be converted to Integer"),
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


# Values just outside each range of the table, NaN and infinity for every float.
OUT_OF_RANGE = {
    "model.head_dropout": ["-0.1", "1.0", "nan"],
    "model.max_length": ["0", "513"],
    "model.stride": ["-1"],
    "data.max_train_examples": ["0", "-1"],
    "data.max_eval_examples": ["0"],
    "train.batch_size": ["0", "-32"],
    "train.eval_batch_size": ["0"],
    "train.threads": ["0"],
    "train.checkpoint_every_steps": ["0", "-5"],
    "train.checkpoint_every_minutes": ["0", "-1", "nan", "inf"],
    "train.log_every_steps": ["0"],
    "train.pack_length": ["0", "4097"],
    "train.ddp_timeout_s": ["0", "-5", "nan", "inf"],
    "train.eval_subset": ["1", "0"],
    "train.bucket_batches": ["0"],
    "data.phrase_min_words": ["0"],
    "train.rdrop": ["-0.1", "nan", "inf"],
    "train.distill_weight": ["-0.1", "1.1", "nan"],
    "train.grad_accum_steps": ["0", "-2"],
    "train.max_grad_norm": ["0", "-1.0", "nan", "inf"],
    "train.early_stopping.patience": ["0", "-1"],
    "train.early_stopping.min_delta": ["-0.01", "nan", "inf"],
    "train.phases.0.epochs": ["-1"],
    "train.phases.0.full_epochs": ["-1"],
    "train.phases.0.lr": ["0", "-1e-5", "nan", "inf"],
    "train.phases.0.head_lr": ["0", "-5e-4", "nan", "inf"],
    "train.phases.0.steps_per_epoch": ["0"],
    "train.phases.0.eval_every_steps": ["0", "-100"],
    "train.phases.0.warmup_ratio": ["-0.1", "1.01", "nan"],
    "train.phases.0.layer_lr_decay": ["0", "1.5", "nan"],
    "train.phases.0.weight_decay": ["-0.01", "nan", "inf"],
}


def test_every_range_has_out_of_range_cases():
    ranges = {key.replace("*", "0") for key, rule in RULES.items() if rule.test is not None}
    # loss weights: tested below, by task name; length buckets: a whole list, in tests/tasks/test_buckets.py
    assert set(OUT_OF_RANGE) == ranges - {"train.loss_weights.0", "train.length_buckets.0"}


@pytest.mark.parametrize("key, value", [(k, v) for k, values in OUT_OF_RANGE.items() for v in values])
def test_values_out_of_range_are_errors(key, value):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: \S+ is out of range \(allowed: [^)]+\)$"):
        load_config(None, [f"{key}={value}"])


def test_loss_weights_and_rdrop_tasks_name_training_tasks():
    cfg = load_config(None, ["train.loss_weights={sst_phrases: 0.5}", "train.rdrop_tasks=[sst, sst_phrases]",
                             "train.phases.0.tasks=[sst_phrases, sst]"])  # fmt: skip
    assert cfg.train.loss_weights == {"sst_phrases": 0.5}
    with pytest.raises(ConfigError, match=r"^train.loss_weights: 'cfimdb' is not one of the run's training tasks"):
        load_config(None, ["train.loss_weights={cfimdb: 2}"])
    with pytest.raises(ConfigError, match=r"^train.rdrop_tasks: 'quora' is not one of"):
        load_config(None, ["train.rdrop=1", "train.rdrop_tasks=[quora]"])
    assert load_config(None, ["tasks=[para]", "train.phases.0.tasks=[para]"]).train.rdrop_tasks == ["sst", "sts"]  # off
    with pytest.raises(ConfigError, match=r"^train.loss_weights.sst: -1.0 is out of range"):
        load_config(None, ["train.loss_weights={sst: -1}"])
    with pytest.raises(ConfigError, match=r"^train.phases.0.tasks: a frozen phase"):
        load_config(None, ["train.phases.0.tasks=[sst_phrases]", "train.phases.0.mode=frozen"])
    with pytest.raises(ConfigError, match=r"^train.phases.0.tasks: \['sst_phrases'\] must be"):  # no sst: no owner
        load_config(None, ["tasks=[para]", "train.phases.0.tasks=[sst_phrases]"])


def test_range_edges_are_allowed():
    cfg = load_config(None, ["model.head_dropout=0", "model.max_length=512", "train.batch_size=1",
                             "train.phases.0.epochs=0", "train.phases.0.warmup_ratio=1",
                             "train.phases.0.layer_lr_decay=1", "train.phases.0.weight_decay=0",
                             "data.max_train_examples=null", "train.phases.0.head_lr=null"])  # fmt: skip
    assert cfg.train.phases[0].warmup_ratio == 1.0 and cfg.train.phases[0].head_lr is None
