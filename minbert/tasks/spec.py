"""Tasks as data: a task is a YAML declaration, turned here into the one spec that holds
everything task-specific (files, columns, label parsing, head, loss, prediction, metrics,
output format). Nothing is inferred from a dtype.

A run's tasks are a `TaskSet`, a value built from its config (`TaskSet.of(cfg.tasks)`) and
carried by the model, the run and the Predictor: there is no global registry, so two models
with different tasks live side by side in one process.

The seed's three tasks are declarations shipped with the package (`builtin/*.yaml`); a run
declares more in its config (`tasks:` a built-in name, a path to a YAML file, or the
declaration inline). A declaration:

    name: cfimdb                      # the name phases and outputs use
    kind: binary                      # classification (num_classes, label_names) | binary | regression (range)
    input: [sentence]                 # one text column, or two for a pair
    label: sentiment                  # the label column; id: the id column (default "id")
    files: {train: ..., dev: ..., test: ...}   # relative to data.dir; test optional (unlabelled)
    format: tsv                       # tsv | csv | jsonl (default: from the file name; CS224N's .csv files are tsv)
    pair_encoding: null               # siamese | cross; null: model.pair_encoding
    head: null                        # null: by kind (see HEADS); classification: mlp | linear; pairs: pair | cosine
    loss: null                        # null: cross_entropy | bce | mse by kind; regression: mse | cosent | mse+cosent
    metrics: [accuracy, macro_f1]     # accuracy macro_f1 matthews pearson spearman; the first is primary
    primary: null                     # or name one of metrics
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from minbert.tasks.data import FORMATS, ReadResult, read_table
from minbert.tasks.metrics import METRICS

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
SEED_TASKS = ("sst", "para", "sts")
# The names a declaration (and, for the model-wide defaults, a run config: minbert/config.py's
# RULES) may choose from, said once here.
KINDS = ("classification", "binary", "regression")
PAIR_ENCODINGS = ("siamese", "cross")
DEFAULT_LOSS = {"classification": "cross_entropy", "binary": "bce", "regression": "mse"}
LOSSES = {"classification": ("cross_entropy",), "binary": ("bce",), "regression": ("mse", "cosent", "mse+cosent")}
DEFAULT_METRICS = {"classification": ["accuracy"], "binary": ["accuracy"], "regression": ["pearson"]}
# Heads a declaration may name (None: the model config's choice, see minbert.multitask.build_head).
HEADS = {"classification": ("mlp", "linear", "pair"), "binary": ("linear", "pair"), "regression": ("linear", "pair", "cosine")}
# A pair is a paraphrase (a binary task's answer is 1) when sigmoid(logit) > this probability.
# `predict` compares the logit with log(p / (1 - p)) instead (0 for 0.5): the same decision,
# with no rounding of the sigmoid.
PARAPHRASE_THRESHOLD = 0.5
# The CS224N leaderboard's column names (its starter code's; "Similiary" [sic]).
CS224N_COLUMNS = {"sst": "Predicted_Sentiment", "para": "Predicted_Is_Paraphrase", "sts": "Predicted_Similiary"}


def probability_logit(p: float) -> float:
    """The logit whose sigmoid is p: log(p / (1 - p)); exactly 0.0 for p = 0.5."""
    return math.log(p / (1.0 - p))


class TaskError(ValueError):
    """A task declaration that cannot be used: names the declaration and the reason."""


@dataclass
class TaskDeclaration:
    """The schema of a task's YAML (see the module docstring)."""

    name: str
    kind: str
    input: list[str]
    files: dict[str, str]
    label: str = "label"
    id: str = "id"
    format: str | None = None
    num_classes: int | None = None
    label_names: list[str] | None = None
    range: list[float] | None = None
    pair_encoding: str | None = None
    head: str | None = None
    loss: str | None = None
    metrics: list[str] = field(default_factory=list)
    primary: str | None = None
    output_prefix: str | None = None  # prediction files {prefix}-{dev,test}-output.csv; default the name


# ---------------------------------------------------------------------------------------
# The spec a run uses


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    files: dict[str, str]  # split ("train", "dev", "test") -> file, relative to the data directory
    text_columns: tuple[str, ...]
    label_column: str
    id_column: str
    format: str
    num_classes: int  # outputs of the head: K for classification, 1 otherwise
    label_names: tuple[str, ...] | None
    value_range: tuple[float, float] | None  # regression
    pair_encoding: str | None
    head: str | None
    loss_name: str
    metrics: tuple[str, ...]
    primary: str
    output_prefix: str
    declaration: dict = field(compare=False, repr=False)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def class_names(self) -> tuple[str, ...]:
        """A classification task's class names: its label_names, else the class numbers."""
        return self.label_names or tuple(str(k) for k in range(self.num_classes))

    @property
    def is_builtin(self) -> bool:
        """The built-in task of this name, as built in (not a run's redeclaration of the name)."""
        return BUILTIN.get(self.name) == self

    @property
    def label_dtype(self) -> torch.dtype:
        return torch.long if self.kind == "classification" else torch.float

    @property
    def metric(self) -> Callable[[list, list], float]:
        return METRICS[self.primary]

    @property
    def metric_name(self) -> str:
        return self.primary

    def parse_label(self, raw: str) -> float | int:
        if self.kind == "classification":  # labels are class numbers; label_names only name them
            if not raw.isdigit() or not 0 <= int(raw) < self.num_classes:
                raise ValueError(f"expected an integer 0-{self.num_classes - 1}")
            return int(raw)
        value = float(raw)
        if self.kind == "binary":
            if value not in (0.0, 1.0):
                raise ValueError("expected 0 or 1")
            return value
        low, high = self.value_range
        if not low <= value <= high:  # NaN fails here too
            raise ValueError(f"expected a score between {low:g} and {high:g}")
        return value

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The declared loss; CoSENT (for regression) is added in minbert.tasks.losses.task_loss."""
        if self.kind == "classification":
            return F.cross_entropy(output, labels)
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(output, labels)
        return F.mse_loss(output, labels)

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """Model output -> the prediction written to files: a class, 0/1, or the score."""
        if self.kind == "classification":
            return output.argmax(dim=-1)
        if self.kind == "binary":
            return (output > probability_logit(PARAPHRASE_THRESHOLD)).long()
        return output

    def soft_predict(self, output: torch.Tensor) -> torch.Tensor:
        """Model output -> class probabilities, P(positive), or the score."""
        if self.kind == "classification":
            return output.softmax(dim=-1)
        if self.kind == "binary":
            return output.sigmoid()
        return output

    def format_prediction(self, p: float | int) -> str:
        return f"{float(p):.4f}" if self.kind == "regression" else str(int(p))

    @property
    def cs224n_column(self) -> str:
        return CS224N_COLUMNS.get(self.name, f"Predicted_{self.name}")

    def format_cs224n(self, p: float | int) -> str:
        """The prediction as the CS224N starter code prints it (see evaluation.write_predictions):
        a class index (`3`), a float32 0/1 from a rounded sigmoid (`1.0`), or a float32 score in
        numpy's shortest form (`3.8712947`)."""
        if self.kind == "classification":
            return str(int(p))
        return str(float(p)) if self.kind == "binary" else str(np.float32(p))

    def file(self, data_dir: Path, split: str) -> Path:
        """The file of `split` in `data_dir`."""
        return Path(data_dir) / self.files[split]

    def read(self, data_dir: Path, split: str, skip_bad_rows: bool = False) -> ReadResult:
        label_column = None if split == "test" else self.label_column
        return read_table(self.file(data_dir, split), self.text_columns, label_column, self.parse_label,
                          skip_bad_rows, self.id_column, self.format)  # fmt: skip


def spec_from_declaration(raw: Any, where: str = "task") -> TaskSpec:
    """Check a declaration (a mapping) against the schema and the rules; one clear error each."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(raw, dict):
        raise TaskError(f"{where}: a task declaration must be a mapping, got {raw!r}")
    name = raw.get("name", "?")
    where = f"{where} {name!r}" if where == "task" else f"{where} (task {name!r})"
    try:
        d: TaskDeclaration = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskDeclaration), raw))
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        msg = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
        raise TaskError(f"{where}: {key + ': ' if key else ''}{msg}") from None

    fmt = d.format or _format_of(d.files.get("train", ""))
    problem = next((reason for broken, reason in _declaration_rules(d, fmt) if broken), None)
    if problem:
        raise TaskError(f"{where}: {problem}")
    loss = d.loss or DEFAULT_LOSS[d.kind]
    metrics = tuple(d.metrics or DEFAULT_METRICS[d.kind])
    primary = d.primary or metrics[0]
    return TaskSpec(
        name=d.name, kind=d.kind, files=dict(d.files), text_columns=tuple(d.input), label_column=d.label,
        id_column=d.id, format=fmt, num_classes=d.num_classes or 1,
        label_names=tuple(d.label_names) if d.label_names else None,
        value_range=(float(d.range[0]), float(d.range[1])) if d.range else None,
        pair_encoding=d.pair_encoding, head=d.head, loss_name=loss, metrics=metrics, primary=primary,
        output_prefix=d.output_prefix or d.name, declaration=dict(raw),
    )  # fmt: skip


def _declaration_rules(d: TaskDeclaration, fmt: str):
    """(broken, reason) for each rule of a declaration, in order; the first broken one is raised.
    OmegaConf has checked the types; these are the rules between fields. Lazy, so a rule is only
    read once the ones before it hold (later ones may rely on them)."""
    kind_ok = d.kind in KINDS
    yield not (bool(d.name) and d.name.replace("_", "").isalnum()), f"name {d.name!r} must be letters, digits and _"
    yield not kind_ok, f"kind {d.kind!r} is not one of {KINDS}"
    yield len(d.input) not in (1, 2), f"input must name one text column or two (a pair), got {d.input}"
    yield not {"train", "dev"} <= set(d.files) <= {"train", "dev", "test"}, \
        f"files must give train and dev (and may give test), got {sorted(d.files)}"
    yield fmt not in FORMATS, f"format {fmt!r} is not one of {FORMATS}"
    classification = d.kind == "classification"
    yield classification and not (d.num_classes is not None and d.num_classes >= 2), "classification needs num_classes >= 2"
    yield classification and d.label_names is not None and len(d.label_names) != d.num_classes, \
        f"label_names has {len(d.label_names or [])} names for {d.num_classes} classes"
    yield not classification and (d.num_classes is not None or d.label_names is not None), \
        f"num_classes and label_names are for classification, not {d.kind}"
    bad_range = d.range is None or len(d.range) != 2 or not all(map(math.isfinite, d.range)) or d.range[0] >= d.range[1]
    yield d.kind == "regression" and bad_range, f"regression needs range: [low, high] with low < high, got {d.range}"
    yield d.kind != "regression" and d.range is not None, f"range is for regression, not {d.kind}"
    yield d.pair_encoding not in (None, *PAIR_ENCODINGS), f"pair_encoding {d.pair_encoding!r} is not one of {PAIR_ENCODINGS}"
    yield d.head is not None and d.head not in HEADS[d.kind], f"head {d.head!r} is not one of {HEADS[d.kind]} for {d.kind}"
    yield d.head in ("pair", "cosine") and len(d.input) != 2, f"head {d.head!r} needs a pair input"
    loss = d.loss or DEFAULT_LOSS[d.kind]
    yield loss not in LOSSES[d.kind], f"loss {loss!r} is not one of {LOSSES[d.kind]} for {d.kind}"
    metrics = tuple(d.metrics or DEFAULT_METRICS[d.kind])
    yield not all(m in METRICS for m in metrics), f"metrics {list(metrics)}: each must be one of {tuple(METRICS)}"
    correlation_only = ("pearson", "spearman")
    for m in metrics:
        if d.kind == "regression":
            yield m not in correlation_only, f"metric {m!r} does not fit a regression task: use {correlation_only}"
        else:
            yield m in correlation_only, f"metric {m!r} does not fit a {d.kind} task"
    primary = d.primary or metrics[0]
    yield primary not in metrics, f"primary {primary!r} is not among metrics {list(metrics)}"


def _format_of(file_name: str) -> str:
    suffix = Path(file_name).suffix.lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}.get(suffix, "tsv")


def load_declaration(path: str | Path) -> dict:
    """A task YAML file as a mapping (its errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: task file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: a task file must hold one mapping")
    return raw


BUILTIN: dict[str, TaskSpec] = {
    p.stem: spec_from_declaration(load_declaration(p), str(p)) for p in sorted(BUILTIN_DIR.glob("*.yaml"))
}

def declared(entry: Any, where: str = "tasks") -> dict | str:
    """A config's task entry made self-contained: a built-in name stays a name; a path to a
    YAML file becomes the declaration it holds (so a saved config needs no other file); an
    inline mapping stays as it is. Raises TaskError for anything else."""
    if isinstance(entry, str) and entry in BUILTIN:
        return entry
    if isinstance(entry, str):
        if not entry.endswith((".yaml", ".yml")):
            raise TaskError(f"{where}: {entry!r} is neither a built-in task {tuple(BUILTIN)} nor a .yaml file")
        return load_declaration(entry)
    if isinstance(entry, dict):
        return entry
    raise TaskError(f"{where}: {entry!r} is not a task name, a YAML path or a declaration")


# Train-only tasks: more training data for a declared task, trained through that task's head,
# loss and spec, never evaluated on their own. A phase names them like any task
# (`tasks: [sst_phrases]`: the SST treebank's labelled phrases, minbert/phrases.py).
TRAIN_ONLY = {"sst_phrases": "sst"}


def head_task(name: str) -> str:
    """The task whose head and spec a training task uses: itself, or a train-only task's owner."""
    return TRAIN_ONLY.get(name, name)


def is_seed_task_set(specs: dict[str, TaskSpec]) -> bool:
    """The CS224N overall score applies: exactly the three built-in seed tasks, as built in."""
    return sorted(specs) == sorted(SEED_TASKS) and all(spec.is_builtin for spec in specs.values())


class TaskSet(Mapping[str, TaskSpec]):
    """A run's tasks: name -> spec in the run's order, as its config declares them. A train-only
    task (TRAIN_ONLY) whose owner is among them is looked up as its owner (`ts["sst_phrases"]`
    is the SST spec) but is not one of the set's names. A value, never a global: a model, a run
    and a Predictor each carry their own."""

    def __init__(self, specs: dict[str, TaskSpec]):
        self._specs = dict(specs)

    @classmethod
    def of(cls, entries: list) -> "TaskSet":
        """The tasks of a config's `tasks:` entries (built-in names or declarations)."""
        specs: dict[str, TaskSpec] = {}
        for i, entry in enumerate(entries):
            is_builtin = isinstance(entry, str) and entry in BUILTIN
            spec = BUILTIN[entry] if is_builtin else spec_from_declaration(declared(entry), f"tasks.{i}")
            if spec.name in specs:
                raise TaskError(f"tasks.{i}: a second task named {spec.name!r}")
            specs[spec.name] = spec
        return cls(specs)

    @classmethod
    def seed(cls) -> "TaskSet":
        """The seed report's three tasks."""
        return cls({n: BUILTIN[n] for n in SEED_TASKS})

    def __getitem__(self, name: str) -> TaskSpec:
        owner = TRAIN_ONLY.get(name, name) if TRAIN_ONLY.get(name) in self._specs else name
        if owner not in self._specs:
            raise KeyError(f"task {name!r} is not one of {tuple(self._specs)}")
        return self._specs[owner]

    def __contains__(self, name: object) -> bool:  # the set's own tasks; a train-only name is not one
        return name in self._specs

    def __iter__(self):
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskSet) and self._specs == other._specs

    def __repr__(self) -> str:
        return f"TaskSet({list(self._specs)})"

    @property
    def trainable(self) -> tuple[str, ...]:
        """The names a phase may train: the tasks, and the train-only tasks of their owners."""
        return tuple(self._specs) + tuple(t for t, owner in TRAIN_ONLY.items() if owner in self._specs)

    @property
    def is_seed(self) -> bool:
        return is_seed_task_set(self._specs)

    def check(self, name: str) -> TaskSpec:
        """The spec of one of the set's tasks (not a train-only one); a ValueError naming the tasks."""
        if name not in self._specs:
            raise ValueError(f"task {name!r} is not one of {tuple(self._specs)}")
        return self._specs[name]


SST_CLASSES = BUILTIN["sst"].num_classes
SST_CLASS_NAMES = SST_LABEL_NAMES = BUILTIN["sst"].label_names  # labels 0-4
