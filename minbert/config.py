"""Run configuration: dataclasses with the baseline's defaults, YAML files, dotted overrides.

A config file holds values only. `load_config(path, ["train.seed=3", "train.phases.0.lr=2e-5"])`
merges the file over the defaults, applies the overrides, and rejects any unknown key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    checkpoint: str | None = None  # BERT checkpoint directory; None = the embedded all-MiniLM-L6-v2
    pooling: str = "cls"  # "cls" (pooler: tanh(W h_CLS)) or "mean" (mean of token vectors)
    pair_encoding: str = "siamese"  # "siamese" (each side alone) or "cross" ([CLS] a [SEP] b [SEP])
    sentiment_head: str = "mlp"  # "mlp" (the report's 2-layer ReLU head) or "linear"
    similarity_head: str = "pair"  # "pair" ([|u-v|, u*v] -> Linear -> sigmoid*5) or "cosine"
    head_dropout: float = 0.1
    max_length: int = 128


@dataclass
class DataConfig:
    dir: str | None = None  # None: ../shared/data, found from the working directory
    skip_bad_rows: bool = False
    # Cap on training examples per task (a seeded sample, fixed for the run); None = all.
    # Used by tests and for quick experiments.
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    sst_phrases: bool = False  # add every labelled phrase of sst-trees-train.txt to SST training
    cache_dir: str = "~/.cache/minbert"  # frozen-encoder feature cache


@dataclass
class PhaseConfig:
    """One stage of training: which tasks, how long, how fast, and whether the encoder learns."""

    name: str = "multitask"
    tasks: list[str] = field(default_factory=lambda: ["sst", "para", "sts"])
    epochs: int = 1
    full_epochs: int | None = None  # the epochs of the full (GPU) budget; used with train.budget=full
    lr: float = 1e-5
    head_lr: float | None = None  # None: same as lr
    mode: str = "finetune"  # "finetune" (all weights), "frozen" (heads only), "mlm" (masked-LM on the tasks' train sentences)
    sampler: str = "round_robin"  # "round_robin", "proportional" or "annealed"
    # Steps (batches) per epoch. None: round-robin visits the smallest task's training set
    # once per epoch (one batch of each task per round); a single-task phase passes over its
    # task once; the samplers take as many steps as round-robin would.
    steps_per_epoch: int | None = None
    warmup_ratio: float = 0.0  # linear warm-up over this fraction of the phase's steps
    decay: str = "constant"  # "constant" or "linear" (to zero at the end of the phase)
    layer_lr_decay: float = 1.0  # lr of layer l = lr * decay^(L - l); 1.0 = off
    weight_decay: float = 0.01


@dataclass
class TrainConfig:
    seed: int = 11711
    batch_size: int = 32
    eval_batch_size: int = 128
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    threads: int | None = None  # torch intra-op threads; None = torch's default
    fused_adamw: bool = True  # torch's fused AdamW kernel (CPU and CUDA)
    eval_every_epoch: bool = True
    predict_test: bool = True  # write the *-test-output.csv files at the end
    budget: str = "cpu"  # "cpu": each phase's epochs; "full": its full_epochs where given
    cache_features: bool = True  # frozen phases train the heads on cached encoder vectors
    sts_loss: str = "mse"  # "mse", "cosent" (Su 2022) or "mse+cosent"
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16"
    compile: bool = False  # torch.compile the encoder (dynamic shapes: batches vary in length)
    # last.safetensors is written at each epoch's end and, within epochs, every N steps and/or
    # every M minutes (None turns either off): a crash loses minutes, not an epoch.
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 5.0
    log_every_steps: int = 50  # steps.jsonl is written (and losses checked finite) this often
    tensorboard: bool = False  # also write the step losses, lr and dev scores to RUN/tensorboard/ (the tensorboard extra)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------


def _merge(base: dict, update: dict, where: str) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, f"{where}{k}.")
        else:
            out[k] = v
    return out


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = tree
    for i, k in enumerate(keys[:-1]):
        node = _child(node, k, ".".join(keys[: i + 1]))
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, dotted)] = value
    else:
        node[last] = value


def _child(node: Any, key: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, path)]
    if not isinstance(node, dict) or key not in node:
        raise ConfigError(f"unknown config key {path!r}")
    return node[key]


def _index(node: list, key: str, path: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"{path!r}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct dataclass `cls` from plain data, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(where + k for k in unknown)}")
    kwargs = {k: _coerce(hints[k], v, where + k) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> RunConfig:
    """Defaults (or `base`, a saved config) <- YAML file <- `key.sub=value` overrides (values
    parsed as YAML, so `train.phases.0.tasks=[sst]` works)."""
    tree = _merge(to_dict(RunConfig()), base or {}, "")
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping")
        tree = _merge(tree, loaded, "")
    for item in overrides:
        key, sep, raw = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        _set_dotted(tree, key, yaml.safe_load(raw))
    try:
        cfg = _build(RunConfig, tree, "")
    except TypeError as e:  # pragma: no cover - dataclass arity errors
        raise ConfigError(str(e)) from None
    validate(cfg)
    if cfg.train.budget == "full":  # idempotent, so a saved config reloads to itself
        for phase in cfg.train.phases:
            phase.epochs = phase.full_epochs if phase.full_epochs is not None else phase.epochs
    return cfg


CHOICES = {
    "model.pooling": ("cls", "mean"),
    "model.pair_encoding": ("siamese", "cross"),
    "model.sentiment_head": ("mlp", "linear"),
    "model.similarity_head": ("pair", "cosine"),
}
PHASE_CHOICES = {
    "mode": ("finetune", "frozen", "mlm"),
    "sampler": ("round_robin", "proportional", "annealed"),
    "decay": ("constant", "linear"),
}
TASK_NAMES = ("sst", "para", "sts")


def validate(cfg: RunConfig) -> None:
    for dotted, allowed in CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{dotted}: {value!r} is not one of {allowed}")
    if not cfg.train.phases:
        raise ConfigError("train.phases: at least one phase is needed")
    for i, phase in enumerate(cfg.train.phases):
        for name, allowed in PHASE_CHOICES.items():
            if getattr(phase, name) not in allowed:
                raise ConfigError(f"train.phases.{i}.{name}: {getattr(phase, name)!r} is not one of {allowed}")
        bad = [t for t in phase.tasks if t not in TASK_NAMES]
        if bad or not phase.tasks:
            raise ConfigError(f"train.phases.{i}.tasks: {phase.tasks} must be a non-empty subset of {TASK_NAMES}")
        if phase.epochs < 0 or phase.lr <= 0:
            raise ConfigError(f"train.phases.{i}: epochs must be >= 0 and lr > 0")
    if cfg.train.sts_loss not in ("mse", "cosent", "mse+cosent"):
        raise ConfigError(f"train.sts_loss: {cfg.train.sts_loss!r} is not one of ('mse', 'cosent', 'mse+cosent')")
    if cfg.train.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision: {cfg.train.precision!r} is not one of ('auto', 'fp32', 'bf16')")
    if cfg.train.budget not in ("cpu", "full"):
        raise ConfigError(f"train.budget: {cfg.train.budget!r} is not one of ('cpu', 'full')")
    if cfg.model.similarity_head == "cosine" and cfg.model.pair_encoding == "cross":
        raise ConfigError("model.similarity_head 'cosine' needs model.pair_encoding 'siamese'")


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
