"""Everything task-specific, in one table: files, columns, label parsing, loss, prediction,
metric and the output format. Code elsewhere looks a task up by name; nothing is inferred
from a label's dtype."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from minbert.data import ReadResult, read_table
from minbert.metrics import accuracy, pearson

SST_CLASSES = 5
SST_LABEL_NAMES = ("very negative", "negative", "neutral", "positive", "very positive")  # SST-5's labels 0-4
# A pair is a paraphrase when sigmoid(logit) > this probability. `predict` compares the logit
# with log(p / (1 - p)) instead (0 for 0.5): the same decision, with no rounding of the sigmoid.
PARAPHRASE_THRESHOLD = 0.5


def probability_logit(p: float) -> float:
    """The logit whose sigmoid is p: log(p / (1 - p)); exactly 0.0 for p = 0.5."""
    return math.log(p / (1.0 - p))


def _sentiment_label(raw: str) -> int:
    if not raw.isdigit() or not 0 <= int(raw) < SST_CLASSES:
        raise ValueError(f"expected an integer 0-{SST_CLASSES - 1}")
    return int(raw)


def _binary_label(raw: str) -> float:
    value = float(raw)
    if value not in (0.0, 1.0):
        raise ValueError("expected 0 or 1")
    return value


def _similarity_label(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 5.0:
        raise ValueError("expected a score between 0 and 5")
    return value


@dataclass(frozen=True)
class TaskSpec:
    name: str
    files: dict[str, str]  # split ("train", "dev", "test") -> file name in the data directory
    text_columns: tuple[str, ...]
    label_column: str
    parse_label: Callable[[str], float | int]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (model output, labels) -> scalar
    predict: Callable[[torch.Tensor], torch.Tensor]  # model output -> predictions
    metric: Callable[[list, list], float]
    metric_name: str
    label_dtype: torch.dtype
    format_prediction: Callable[[float | int], str]
    output_prefix: str  # prediction files are {prefix}-{dev,test}-output.csv
    # The CS224N leaderboard's layout (see evaluation.write_predictions): its header's column
    # name, and the prediction as the course's starter code prints it.
    cs224n_column: str
    format_cs224n: Callable[[float | int], str]

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    def read(self, data_dir: Path, split: str, skip_bad_rows: bool = False) -> ReadResult:
        label_column = None if split == "test" else self.label_column
        return read_table(data_dir / self.files[split], self.text_columns, label_column, self.parse_label, skip_bad_rows)


TASKS: dict[str, TaskSpec] = {
    "sst": TaskSpec(
        name="sst",
        files={"train": "ids-sst-train.csv", "dev": "ids-sst-dev.csv", "test": "ids-sst-test-student.csv"},
        text_columns=("sentence",),
        label_column="sentiment",
        parse_label=_sentiment_label,
        loss=lambda logits, y: F.cross_entropy(logits, y),
        predict=lambda logits: logits.argmax(dim=-1),
        metric=accuracy,
        metric_name="accuracy",
        label_dtype=torch.long,
        format_prediction=lambda p: str(int(p)),
        output_prefix="sst",
        cs224n_column="Predicted_Sentiment",
        format_cs224n=lambda p: str(int(p)),  # an int64 class index: `3`
    ),
    "para": TaskSpec(
        name="para",
        files={"train": "quora-train.csv", "dev": "quora-dev.csv", "test": "quora-test-student.csv"},
        text_columns=("sentence1", "sentence2"),
        label_column="is_duplicate",
        parse_label=_binary_label,
        loss=lambda logit, y: F.binary_cross_entropy_with_logits(logit, y),
        predict=lambda logit: (logit > probability_logit(PARAPHRASE_THRESHOLD)).long(),
        metric=accuracy,
        metric_name="accuracy",
        label_dtype=torch.float,
        format_prediction=lambda p: str(int(p)),
        output_prefix="para",
        cs224n_column="Predicted_Is_Paraphrase",
        format_cs224n=lambda p: str(float(p)),  # a float32 0 or 1 (sigmoid rounded): `1.0`
    ),
    "sts": TaskSpec(
        name="sts",
        files={"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv"},
        text_columns=("sentence1", "sentence2"),
        label_column="similarity",
        parse_label=_similarity_label,
        loss=lambda score, y: F.mse_loss(score, y),
        predict=lambda score: score,
        metric=pearson,
        metric_name="pearson",
        label_dtype=torch.float,
        format_prediction=lambda p: f"{float(p):.4f}",
        output_prefix="sts",
        cs224n_column="Predicted_Similiary",  # [sic], as the leaderboard expects it
        format_cs224n=lambda p: str(np.float32(p)),  # a float32 in numpy's shortest form: `3.8712947`
    ),
}
