"""Prediction, dev scores and the prediction files: what training's evaluations, a finished
run's outputs and the Predictor share. A task's spec comes with its data (`EncodedTask.spec`)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from minbert import distributed
from minbert.multitask import MultitaskBert
from minbert.run_files import RunError, atomic_write
from minbert.tasks.data import sorted_batches
from minbert.tasks.encoding import EncodedTask
from minbert.tasks.metrics import METRICS, mean_primary, overall_score
from minbert.tasks.spec import TaskSpec, is_seed_task_set

# Optional stand-in for the encoder: (task, split-name, indices) -> feature tuple. Used when
# the encoder is frozen and its vectors are cached (see minbert.features).
FeatureFn = Callable[[list[int]], tuple[torch.Tensor, ...]]


@torch.inference_mode()
def predict(
    model: MultitaskBert,
    task: str,
    data: EncodedTask,
    batch_size: int = 128,
    features: FeatureFn | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> list:
    """Predictions for every example of `data`, in input order (see `head_outputs`).
    (7 parameters: the model, the task and its data, then four settings with defaults that callers pass by name.)"""
    return data.spec.predict(model_outputs(model, task, data, batch_size, features, device, precision)).float().tolist()


def predict_soft(model: MultitaskBert, task: str, data: EncodedTask, batch_size: int = 128,
                 device: torch.device | str = "cpu", precision: str = "fp32") -> tuple[list, list]:  # fmt: skip
    """`predict`'s predictions and, from the same forward passes, what each was read from
    (`TaskSpec.soft_predict`): class probabilities, P(positive), or the score."""
    return hard_and_soft(data.spec, model_outputs(model, task, data, batch_size, None, device, precision))


def hard_and_soft(spec: TaskSpec, outputs: torch.Tensor) -> tuple[list, list]:
    """A task's predictions from its head's raw outputs, and what each was read from."""
    return spec.predict(outputs).float().tolist(), spec.soft_predict(outputs).tolist()


def model_outputs(model: MultitaskBert, task: str, data: EncodedTask, batch_size: int = 128,
                  features: FeatureFn | None = None, device: torch.device | str = "cpu",
                  precision: str = "fp32") -> torch.Tensor:  # fmt: skip
    """The model's head outputs for every example of `data`, in eval mode (see `head_outputs`).
    (7 parameters: as `predict`, whose settings it takes.)"""
    was_training = model.training
    model.eval()
    device = torch.device(device)

    def forward(indices: list[int]) -> torch.Tensor:
        with distributed.autocast(device, precision):
            if features is not None:
                return model(task, features=features(indices))
            return model.predict_batch(task, data, indices, device)

    try:
        return head_outputs(forward, task, data, batch_size)
    finally:
        model.train(was_training)


# A batch's head outputs: (indices into an EncodedTask) -> (len(indices), ...) tensor.
BatchForward = Callable[[list[int]], torch.Tensor]


@torch.inference_mode()
def head_outputs(forward: BatchForward, task: str, data: EncodedTask, batch_size: int = 128,
                 progress: bool | None = None) -> torch.Tensor:
    """The task head's raw outputs (classification logits (N, K), binary logits (N,), regression
    scores (N,)) for every example of `data`, in input order, as fp32 on the CPU. Batches are
    sorted by length (less padding); the order is restored afterwards; a text cut into windows
    gets the mean of its windows' outputs. `progress`: a bar; None =
    on terminals only (tqdm's disable=None), so logs and CI stay clean."""
    out: dict[int, list | float] = {}
    # Under several processes each rank predicts every world-th batch; all are gathered.
    batches = sorted_batches(data.lengths, batch_size)[distributed.rank() :: distributed.world_size()]
    bar = tqdm(batches, desc=f"predict {task}", leave=False, disable=None if progress is None else not progress,
               mininterval=2.0, unit="batch")  # fmt: skip
    for indices in bar:
        output = forward(indices).float()
        if not torch.isfinite(output).all():  # caught here: a NaN logit would still argmax to a class
            raise RunError(f"the model's {task} outputs are not finite: it has diverged; nothing is predicted")
        out.update(zip(indices, output.cpu().tolist()))
    rows = torch.tensor(distributed.gather_predictions(out, len(data)), dtype=torch.float32)
    return data.mean_over_windows(rows)  # windows of one long text: their mean (model.long_text)


def score(task: str, predictions: list, data: EncodedTask, metric: str | None = None) -> float:
    """A task's metric (default: its primary) of predictions against the split's labels."""
    if data.labels is None:
        raise ValueError(f"{task}: this split has no labels to score against")
    return METRICS[metric or data.spec.primary](predictions, data.labels.tolist())


def dev_scores(predictions: dict[str, list], dev: dict[str, EncodedTask]) -> dict[str, float]:
    """Each task's primary metric under its name, other declared metrics as `{task}_{metric}`,
    and `overall`: the CS224N formula for the seed's three tasks, else the mean of the primary
    metrics with correlations mapped to [0, 1] (see OVERALL_FORMULA)."""
    scores, primaries = {}, {}
    for task, preds in predictions.items():
        spec = dev[task].spec
        for metric in spec.metrics:
            value = score(task, preds, dev[task], metric)
            scores[task if metric == spec.primary else f"{task}_{metric}"] = value
        primaries[task] = (spec.primary, scores[task])
    if is_seed_task_set({task: dev[task].spec for task in predictions}):
        scores["overall"] = overall_score(scores["sst"], scores["para"], scores["sts"])
    else:
        scores["overall"] = mean_primary(primaries)
    return scores


def overall_formula(dev: dict[str, EncodedTask]) -> str:
    """How `overall` is computed for a run's dev sets, in words (metrics.json states it)."""
    if is_seed_task_set({task: data.spec for task, data in dev.items()}):
        return "CS224N: (sst accuracy + para accuracy + (sts pearson + 1) / 2) / 3"
    return "mean over tasks of the primary metric, correlations mapped to [0, 1] by (r + 1) / 2"


PREDICTION_LAYOUTS = ("csv", "cs224n")


def write_predictions(path: Path, ids: list[str], predictions: list, spec: TaskSpec, layout: str = "csv") -> None:
    """One row per input row in input order, written atomically. `csv`: `id,prediction`.

    `cs224n`: the course leaderboard's own layout, as the CS224N default final project's starter
    code writes it (multitask_classifier.py, test_multitask; looked up in public copies of it):
    a header `id \\t <column> \\n` (Predicted_Sentiment, Predicted_Is_Paraphrase,
    Predicted_Similiary [sic]), then one `<id> , <prediction> \\n` line per example, each
    prediction printed as the numpy value its evaluation.py returns (see TaskSpec.format_cs224n),
    with the id lower-cased and stripped as its loader (datasets.py) reads it. Its test files come
    out in shuffled order; ours keep the input order (the leaderboard matches rows by id)."""
    if layout not in PREDICTION_LAYOUTS:
        raise ValueError(f"prediction layout {layout!r} is not one of {PREDICTION_LAYOUTS}")

    def write(tmp: Path) -> None:
        if layout == "cs224n":
            rows = "".join(f"{i.lower().strip()} , {spec.format_cs224n(p)} \n" for i, p in zip(ids, predictions))
            tmp.write_bytes(f"id \t {spec.cs224n_column} \n{rows}".encode("utf-8"))
            return
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "prediction"])
            writer.writerows((i, spec.format_prediction(p)) for i, p in zip(ids, predictions))

    atomic_write(path, write)


def prediction_path(out_dir: Path, spec: TaskSpec, split: str) -> Path:
    return Path(out_dir) / f"{spec.output_prefix}-{split}-output.csv"
