"""Run configuration: dataclasses with the baseline's defaults, YAML files, dotted overrides.

A config file holds values only. `load_config(path, ["train.seed=3", "train.phases.0.lr=2e-5"])`
merges the file over the defaults and applies the overrides (OmegaConf structured configs, the
dataclasses as the schema), rejects unknown keys and wrong types, then checks every value's
range before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from minbert.tasks.spec import HEADS, LOSSES, PAIR_ENCODINGS, TRAIN_ONLY, TaskError, TaskSet, declared


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
    # Texts longer than max_length (single-text tasks; pairs are always truncated): "truncate"
    # (keep the first max_length tokens) or "chunks" (cut into windows of max_length, [CLS] +
    # slice + [SEP], consecutive slices sharing `stride` tokens; a text's prediction is the mean
    # of its windows' head outputs: logits, or the score). long_text_train, with chunks: training
    # takes every window as an example with its text's label ("windows": an epoch counts
    # windows), or only the first ("first": truncation in training).
    long_text: str = "truncate"
    stride: int = 32
    long_text_train: str = "windows"
    # Cross-encoded pairs: predict from both orders ([CLS] a [SEP] b and [CLS] b [SEP] a) and
    # average the two head outputs (logits, scores). Twice the prediction cost.
    symmetric_predict: bool = False
    # Activation checkpointing: in training, each encoder layer's activations are computed
    # again in the backward pass instead of kept (less memory, one more forward per step; the
    # same gradients, dropout masks included). Prediction and exports are unchanged.
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    dir: str | None = None  # None: ../shared/data, found from the working directory
    skip_bad_rows: bool = False
    # Cap on training examples per task (a seeded sample, fixed for the run); None = all.
    # Used by tests and for quick experiments.
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    sst_phrases: bool = False  # add every labelled phrase of sst-trees-train.txt to SST training
    # Phrases (mixed in by sst_phrases, or the train-only task sst_phrases) of at least this many words.
    phrase_min_words: int = 1
    cache_dir: str = "~/.cache/minbert"  # frozen-encoder feature cache
    # --resume / --init-from go on when a data file changed since the run started (noted in
    # its events.jsonl); false: they refuse, naming the file and what changed.
    allow_changed: bool = False


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
    # A dev evaluation every N steps inside this phase's epochs too (None: at epoch ends only;
    # fine-tuning phases only), on train.eval_subset examples of each dev set; one that beats all
    # earlier ones is scored on the full dev sets, which decide the kept checkpoint. Logged to
    # evals.jsonl, with the elapsed time (time to quality).
    eval_every_steps: int | None = None


@dataclass
class EarlyStoppingConfig:
    """Stop training when the dev overall stops improving (off while patience is None). Each dev
    evaluation (an epoch's end; a probe where a phase has eval_every_steps) that does not beat
    the best overall so far by more than min_delta counts; after `patience` of them in a row the
    run stops training and finishes with best.safetensors (training/probes.py)."""

    patience: int | None = None  # evaluations without improvement before stopping; None = off
    min_delta: float = 0.0  # an improvement must exceed this (the best checkpoint still takes any)


@dataclass
class TrainConfig:
    seed: int = 11711
    batch_size: int = 32
    eval_batch_size: int = 128
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    threads: int | None = None  # torch intra-op threads; None = torch's default
    fused_adamw: bool = True  # torch's fused AdamW kernel (CPU and CUDA)
    eval_every_epoch: bool = True
    # The dev examples of the phases' eval_every_steps evaluations: this many of each dev set
    # (a fixed random choice per seed; None: all of them).
    eval_subset: int | None = None
    # Training batches: each pass over a task is shuffled, cut into chunks of this many batches,
    # and each chunk sorted by length before batching (more: less padding, less mixed lengths).
    bucket_batches: int = 50
    predict_test: bool = True  # write the *-test-output.csv files at the end
    budget: str = "cpu"  # "cpu": each phase's epochs; "full": its full_epochs where given
    cache_features: bool = True  # frozen phases train the heads on cached encoder vectors
    sts_loss: str = "mse"  # "mse", "cosent" (Su 2022) or "mse+cosent"
    # "auto": bf16 autocast where the device has native bf16 (CUDA; a CPU with AMX or AVX512-BF16),
    # fp32 elsewhere, resolved at start and recorded (config.yaml, timing.json); "fp32" or "bf16".
    precision: str = "auto"
    # torch.compile the encoder: with dynamic shapes (batches vary in length), or, with
    # length_buckets, static ones (one graph per batch shape). compile_mode is torch.compile's
    # mode: "default", "reduce-overhead" (CUDA graphs: needs compile, length_buckets and a CUDA
    # device) or "max-autotune"; a mode other than "default" needs compile.
    compile: bool = False
    compile_mode: str = "default"
    # Pad every token batch (training, dev and test) up to the smallest of these lengths that
    # holds its longest row (model.max_length is the last bucket): a run's batches then come in a
    # few shapes. Increasing, each 1..model.max_length. None: each batch to its own longest row.
    length_buckets: list[int] | None = None
    # Build (on a GPU: copy, from pinned memory) the next step's batch in a worker thread while
    # the current step runs; the same batches and results as without (training/prefetch.py).
    prefetch: bool = False
    # Packed training batches: each step's sequences (both sides of siamese pairs, R-Drop's
    # copies) laid end to end in rows of pack_length tokens (null: the batch's longest sequence;
    # a row is never shorter than that), each sequence attending to itself only, with positions
    # from its own start, and pooled alone: the same vectors as padded batches, up to float
    # rounding, with padding only at row ends. Dev evaluation and prediction stay padded.
    packing: bool = False
    pack_length: int | None = None  # 1-4096 tokens a row; set only with packing
    # last.safetensors is written at each epoch's end and, within epochs, every N steps and/or
    # every M minutes (None turns either off): a crash loses minutes, not an epoch.
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 5.0
    log_every_steps: int = 50  # steps.jsonl is written (and losses checked finite) this often
    # Under torchrun: how long a collective waits for a rank before the others stop, naming it.
    ddp_timeout_s: float = 300.0
    tensorboard: bool = False  # also write the step losses, lr and dev scores to RUN/tensorboard/ (the tensorboard extra)
    loss_weights: dict[str, float] = field(default_factory=dict)  # a training task's loss x this (default 1)
    # R-Drop (Liang et al. 2021): each batch of these tasks goes through the model twice (two
    # dropout masks); the loss adds rdrop x their disagreement (symmetric KL for classes, the
    # squared difference for scores). 0 = off.
    rdrop: float = 0.0
    rdrop_tasks: list[str] = field(default_factory=lambda: ["sst", "sts"])
    swap_pairs: bool = False  # cross-encoded pairs: each training pair in a random order (b, a) half the time
    # Distillation: a directory written by `minbert ensemble --soft-labels` (train-soft-TASK.jsonl);
    # a task with soft labels there trains on (1 - distill_weight) x its loss + distill_weight x
    # the loss against the teacher's probabilities / scores.
    distill_from: str | None = None
    distill_weight: float = 0.5
    # Gradient accumulation: each optimizer step sums the gradients of k micro-batches of
    # batch_size (one task's global batch of k x batch_size, split): the effective batch is
    # k x batch_size, an epoch has 1/k the steps, and steps, schedules, logs and checkpoints
    # count optimizer steps. Not with prefetch.
    grad_accum_steps: int = 1
    # Clip the gradients' total L2 norm to this before each optimizer step (None: off); the norm
    # before clipping is logged with each step in steps.jsonl ("grad_norm").
    max_grad_norm: float | None = None
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class RunConfig:
    # The run's tasks: built-in names, paths to task YAML files, or declarations inline (see
    # minbert.tasks). Paths are replaced by their content when loaded, so config.yaml is whole.
    tasks: list[Any] = field(default_factory=lambda: ["sst", "para", "sts"])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------


def with_precision(cfg: RunConfig, precision: str) -> RunConfig:
    """A copy of `cfg` with train.precision set (`cfg` itself is left as it is)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> RunConfig:
    """Defaults (or `base`, a saved config) <- YAML file <- `key.sub=value` overrides.

    OmegaConf does the merging and the checking, with the dataclasses above as the schema:
    an unknown key or a value of the wrong type is an error naming the dotted key. Override
    values use OmegaConf's grammar (`train.phases.0.tasks=[sst]`, `train.phases=[{lr: 1e-3}]`),
    and list indices work in keys (`train.phases.1.lr=2e-5`). Ranges are checked last."""
    tree = OmegaConf.structured(RunConfig)
    where = "config"
    try:
        if base is not None:
            tree = OmegaConf.merge(tree, base)
        if path is not None:
            path, where = Path(path), str(path)
            if not path.is_file():
                raise ConfigError(f"{path}: config file not found")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: a config file must be a mapping")
            for i, entry in enumerate(loaded.get("tasks") or []):  # task files beside the config file
                if isinstance(entry, str) and entry.endswith((".yaml", ".yml")) and (path.parent / entry).is_file():
                    loaded["tasks"][i] = str(path.parent / entry)
            tree = OmegaConf.merge(tree, loaded)
        for item in overrides:
            where = f"override {item!r}"
            _apply_override(tree, item.removeprefix("--"))
        cfg = OmegaConf.to_object(tree)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e, where)) from None
    validate(cfg)
    if cfg.train.budget == "full":  # idempotent, so a saved config reloads to itself
        for phase in cfg.train.phases:
            phase.epochs = phase.full_epochs if phase.full_epochs is not None else phase.epochs
    return cfg


def _apply_override(tree: DictConfig, item: str) -> None:
    key, sep, _ = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    value = OmegaConf.select(OmegaConf.from_dotlist([item]), key)  # the value, parsed by OmegaConf's grammar
    parts = key.split(".")
    for i, part in enumerate(parts[1:], 1):  # a list index must exist: OmegaConf would only say "dict is not a P"
        parent = OmegaConf.select(tree, ".".join(parts[:i]), throw_on_missing=False)
        if isinstance(parent, ListConfig) and not (part.isdigit() and int(part) < len(parent)):
            raise ConfigError(f"{'.'.join(parts[: i + 1])!r}: {part!r} is not an index of a list of {len(parent)}")
    OmegaConf.update(tree, key, value, merge=True)


def _one_line(e: OmegaConfBaseException, where: str) -> str:
    key = re.sub(r"\[(\d+)\]", r".\1", str(getattr(e, "full_key", "") or ""))
    msg = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        name = re.search(r"Key '([^']+)'", msg)
        hint = msg.split("Did you mean", 1)
        unknown = key if key.endswith(name.group(1)) else f"{key}.{name.group(1)}".lstrip(".") if name else key
        return f"unknown config key {unknown!r}" + (f" (did you mean{hint[1]})" if len(hint) == 2 else "") + f", in {where}"
    return f"{key}: {msg}" if key else f"{where}: {msg}"


@dataclass(frozen=True)
class Rule:
    """What a config value may be: one of `choices`, or a number for which `test` holds (the
    range in `words`). NaN fails every comparison, so it is out of every range; None (where a
    field allows it) means "not set" and is not checked."""

    choices: tuple | None = None
    test: Callable[[float], bool] | None = None
    words: str = ""

    def check(self, dotted: str, value: Any) -> None:
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{dotted}: {value!r} is not one of {self.choices}")
        if self.test is not None and value is not None and not self.test(value):
            raise ConfigError(f"{dotted}: {value!r} is out of range (allowed: {self.words})")


def one_of(*choices: str) -> Rule:
    return Rule(choices=tuple(choices))


AT_LEAST_1 = Rule(test=lambda v: v >= 1, words=">= 1")
AT_LEAST_0 = Rule(test=lambda v: v >= 0, words=">= 0")
POSITIVE = Rule(test=lambda v: 0 < v < math.inf, words="> 0 and finite")
FINITE_NON_NEGATIVE = Rule(test=lambda v: 0 <= v < math.inf, words=">= 0 and finite")
PHASE = "train.phases.*."  # a key of every phase

# Every choice and range of a run config, in one table. The names of pair encodings, heads and
# losses are the task declarations' (minbert/tasks/spec.py), so each is said once.
RULES: dict[str, Rule] = {
    "model.pooling": one_of("cls", "mean"),
    "model.pair_encoding": one_of(*PAIR_ENCODINGS),
    "model.sentiment_head": one_of(*(h for h in HEADS["classification"] if h != "pair")),  # pairs choose per task
    "model.similarity_head": one_of(*(h for h in HEADS["regression"] if h != "linear")),  # linear: cross pairs only
    "model.head_dropout": Rule(test=lambda v: 0 <= v < 1, words="0 <= value < 1"),
    "model.max_length": Rule(test=lambda v: 1 <= v <= 512, words="1 <= value <= 512"),  # BERT's; runs.build_model checks the checkpoint's
    "model.long_text": one_of("truncate", "chunks"),
    "model.long_text_train": one_of("windows", "first"),
    "model.stride": AT_LEAST_0,  # and below max_length - 2: checked in validate
    "data.max_train_examples": AT_LEAST_1,
    "data.max_eval_examples": AT_LEAST_1,
    "data.phrase_min_words": AT_LEAST_1,
    "train.batch_size": AT_LEAST_1,
    "train.eval_batch_size": AT_LEAST_1,
    "train.threads": AT_LEAST_1,
    "train.checkpoint_every_steps": AT_LEAST_1,
    "train.checkpoint_every_minutes": POSITIVE,
    "train.log_every_steps": AT_LEAST_1,
    "train.ddp_timeout_s": POSITIVE,
    "train.eval_subset": Rule(test=lambda v: v >= 2, words=">= 2, for a correlation"),
    "train.bucket_batches": AT_LEAST_1,
    "train.pack_length": Rule(test=lambda v: 1 <= v <= 4096, words="1 <= value <= 4096"),  # attention is (rows, W, W)
    "train.compile_mode": one_of("default", "reduce-overhead", "max-autotune"),
    "train.length_buckets.*": AT_LEAST_1,  # increasing and at most model.max_length: checked in validate
    "train.rdrop": FINITE_NON_NEGATIVE,
    "train.distill_weight": Rule(test=lambda v: 0 <= v <= 1, words="0 <= value <= 1"),
    "train.sts_loss": one_of(*LOSSES["regression"]),
    "train.precision": one_of("auto", "fp32", "bf16"),
    "train.budget": one_of("cpu", "full"),
    "train.loss_weights.*": FINITE_NON_NEGATIVE,
    "train.grad_accum_steps": AT_LEAST_1,
    "train.max_grad_norm": POSITIVE,
    "train.early_stopping.patience": AT_LEAST_1,
    "train.early_stopping.min_delta": FINITE_NON_NEGATIVE,
    PHASE + "mode": one_of("finetune", "frozen", "mlm"),
    PHASE + "sampler": one_of("round_robin", "proportional", "annealed"),
    PHASE + "decay": one_of("constant", "linear"),
    PHASE + "epochs": AT_LEAST_0,
    PHASE + "full_epochs": AT_LEAST_0,  # the epochs of the full budget: the same range as epochs
    PHASE + "lr": POSITIVE,
    PHASE + "head_lr": POSITIVE,
    PHASE + "steps_per_epoch": AT_LEAST_1,
    PHASE + "eval_every_steps": AT_LEAST_1,
    PHASE + "warmup_ratio": Rule(test=lambda v: 0 <= v <= 1, words="0 <= value <= 1"),
    PHASE + "layer_lr_decay": Rule(test=lambda v: 0 < v <= 1, words="0 < value <= 1"),
    PHASE + "weight_decay": FINITE_NON_NEGATIVE,
}


def _values(cfg: RunConfig, dotted: str) -> list[tuple[str, Any]]:
    """(concrete key, value) for a RULES key: `*` stands for every phase, or every key of a dict."""
    found = [("", cfg)]
    for part in dotted.split("."):
        step = []
        for key, node in found:
            items = enumerate(node) if isinstance(node, list) else node.items() if isinstance(node, dict) else None
            if part == "*":
                step += [(f"{key}.{k}", v) for k, v in items or ()]  # a list that is None (not set): nothing
            else:
                step.append((f"{key}.{part}", node[part] if isinstance(node, dict) else getattr(node, part)))
        found = step
    return [(key.lstrip("."), value) for key, value in found]


def validate(cfg: RunConfig) -> None:
    """Every rule of RULES, then the rules between keys and the run's tasks."""
    try:
        cfg.tasks = [declared(entry, f"tasks.{i}") for i, entry in enumerate(cfg.tasks)]
        tasks = TaskSet.of(cfg.tasks)
    except TaskError as e:
        raise ConfigError(str(e)) from None
    if not tasks:
        raise ConfigError("tasks: at least one task is needed")
    for name, spec in tasks.items():
        if spec.head == "cosine" and (spec.pair_encoding or cfg.model.pair_encoding) == "cross":
            raise ConfigError(f"task {name!r}: head 'cosine' needs pair_encoding 'siamese'")
    if not cfg.train.phases:
        raise ConfigError("train.phases: at least one phase is needed")
    for dotted, rule in RULES.items():
        for key, value in _values(cfg, dotted):
            rule.check(key, value)
    trainable = tasks.trainable
    for i, phase in enumerate(cfg.train.phases):
        bad = [t for t in phase.tasks if t not in trainable]
        if bad or not phase.tasks:
            raise ConfigError(f"train.phases.{i}.tasks: {phase.tasks} must be a non-empty subset of the run's tasks "
                              f"{trainable}")  # fmt: skip
        if phase.mode == "frozen" and any(t in TRAIN_ONLY for t in phase.tasks):
            raise ConfigError(f"train.phases.{i}.tasks: a frozen phase trains on cached vectors of the run's tasks only")
    rdrop_tasks = cfg.train.rdrop_tasks if cfg.train.rdrop > 0 else []  # the default names sst and sts: checked when on
    for key, names in (("train.loss_weights", list(cfg.train.loss_weights)), ("train.rdrop_tasks", rdrop_tasks)):
        bad = [t for t in names if t not in trainable]
        if bad:
            raise ConfigError(f"{key}: {bad[0]!r} is not one of the run's training tasks {trainable}")
    if cfg.model.long_text == "chunks" and cfg.model.stride >= cfg.model.max_length - 2:
        raise ConfigError(f"model.stride: {cfg.model.stride} must be below model.max_length - 2 "
                          f"({cfg.model.max_length - 2}, the text tokens of a window) for model.long_text 'chunks'")  # fmt: skip
    if cfg.train.pack_length is not None and not cfg.train.packing:
        raise ConfigError(f"train.pack_length: {cfg.train.pack_length} is set but train.packing is false "
                          "(set train.packing=true, or leave pack_length null)")  # fmt: skip
    if cfg.train.packing and cfg.train.length_buckets:
        raise ConfigError("train.packing: packed rows vary in number, so they cannot keep train.length_buckets' "
                          "fixed shapes; use one of the two")  # fmt: skip
    _check_compile(cfg.train, cfg.model.max_length)
    if cfg.model.similarity_head == "cosine" and cfg.model.pair_encoding == "cross":
        raise ConfigError("model.similarity_head 'cosine' needs model.pair_encoding 'siamese'")
    if cfg.train.prefetch and cfg.train.grad_accum_steps > 1:
        raise ConfigError(f"train.prefetch: true does not work with train.grad_accum_steps {cfg.train.grad_accum_steps} "
                          "(it builds one batch a step ahead); set one of them off")  # fmt: skip


def _check_compile(train: TrainConfig, max_length: int) -> None:
    """length_buckets increasing and within model.max_length; compile_mode's needs (the device's:
    training.state.launch_checks)."""
    buckets = train.length_buckets
    if buckets is not None and not buckets:
        raise ConfigError("train.length_buckets: an empty list; give at least one length, or null for none")
    for i, (a, b) in enumerate(zip(buckets or [], (buckets or [])[1:]), 1):
        if b <= a:
            raise ConfigError(f"train.length_buckets.{i}: {b} is not above the bucket before it ({a}); "
                              f"buckets must be increasing, got {buckets}")  # fmt: skip
    if buckets and buckets[-1] > max_length:
        raise ConfigError(f"train.length_buckets.{len(buckets) - 1}: {buckets[-1]} is more than model.max_length "
                          f"({max_length}), the longest a row can be")  # fmt: skip
    if train.compile_mode != "default" and not train.compile:
        raise ConfigError(f"train.compile_mode: {train.compile_mode!r} needs train.compile=true")
    if train.compile_mode == "reduce-overhead" and not buckets:
        raise ConfigError("train.compile_mode: 'reduce-overhead' (CUDA graphs, one per batch shape) needs "
                          "train.length_buckets, e.g. [32, 64, 96, 128]")  # fmt: skip


def window_stride(model: ModelConfig, split: str) -> int | None:
    """The stride of long texts' windows in a split's encoding (see ModelConfig.long_text);
    None: truncate. Training with long_text_train "first" truncates."""
    if model.long_text != "chunks" or (split == "train" and model.long_text_train == "first"):
        return None
    return model.stride


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
