"""Prediction, dev scores and the prediction files."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from minbert import distributed
from minbert.data import sorted_batches
from minbert.metrics import METRICS, mean_primary, overall_score
from minbert.multitask import EncodedTask, MultitaskBert
from minbert.run_state import RunError, atomic_write
from minbert.tasks import TASKS, is_seed_task_set

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
    """Predictions for every example of `data`, in input order. Batches are sorted by length
    (less padding); the order is restored afterwards."""
    return _predict(model, task, data, batch_size, features, device, precision, soft=False)[0]


@torch.inference_mode()
def predict_soft(model: MultitaskBert, task: str, data: EncodedTask, batch_size: int = 128,
                 device: torch.device | str = "cpu", precision: str = "fp32") -> tuple[list, list]:  # fmt: skip
    """`predict`'s predictions and, from the same forward passes, what each was read from
    (`TaskSpec.soft_predict`): the 5 class probabilities (SST), P(paraphrase), the similarity (STS)."""
    return _predict(model, task, data, batch_size, None, device, precision, soft=True)


def _predict(model, task, data, batch_size, features, device, precision, soft: bool) -> tuple[list, list | None]:
    spec = TASKS[task]
    was_training = model.training
    model.eval()
    hard: dict[int, float] = {}
    probs: dict[int, float | list[float]] = {}
    device = torch.device(device)
    try:
        # Under several processes each rank predicts every world-th batch; all are gathered.
        batches = sorted_batches(data.lengths, batch_size)[distributed.rank() :: distributed.world_size()]
        # A bar on terminals only (tqdm's disable=None), so logs and CI stay clean.
        for indices in tqdm(batches, desc=f"predict {task}", leave=False, disable=None, mininterval=2.0):
            with distributed.autocast(device, precision):
                if features is not None:
                    output = model(task, features=features(indices))
                else:
                    output = model(task, data.batch(indices).to(device))
            output = output.float()
            if not torch.isfinite(output).all():  # caught here: a NaN logit would still argmax to a class
                raise RunError(f"the model's {task} outputs are not finite: it has diverged; nothing is predicted")
            hard.update(zip(indices, spec.predict(output).float().cpu().tolist()))
            if soft:
                probs.update(zip(indices, spec.soft_predict(output).cpu().tolist()))
    finally:
        model.train(was_training)
    n = len(data)
    return distributed.gather_predictions(hard, n), distributed.gather_predictions(probs, n) if soft else None


def score(task: str, predictions: list, data: EncodedTask, metric: str | None = None) -> float:
    """A task's metric (default: its primary) of predictions against the split's labels."""
    if data.labels is None:
        raise ValueError(f"{task}: this split has no labels to score against")
    return METRICS[metric or TASKS[task].primary](predictions, data.labels.tolist())


def dev_scores(predictions: dict[str, list], dev: dict[str, EncodedTask]) -> dict[str, float]:
    """Each task's primary metric under its name, other declared metrics as `{task}_{metric}`,
    and `overall`: the CS224N formula for the seed's three tasks, else the mean of the primary
    metrics with correlations mapped to [0, 1] (see OVERALL_FORMULA)."""
    scores, primaries = {}, {}
    for task, preds in predictions.items():
        spec = TASKS[task]
        for metric in spec.metrics:
            value = score(task, preds, dev[task], metric)
            scores[task if metric == spec.primary else f"{task}_{metric}"] = value
        primaries[task] = (spec.primary, scores[task])
    if is_seed_task_set(predictions):
        scores["overall"] = overall_score(scores["sst"], scores["para"], scores["sts"])
    else:
        scores["overall"] = mean_primary(primaries)
    return scores


def overall_formula(tasks) -> str:
    """How `overall` is computed for a task set, in words (metrics.json states it)."""
    if is_seed_task_set(tasks):
        return "CS224N: (sst accuracy + para accuracy + (sts pearson + 1) / 2) / 3"
    return "mean over tasks of the primary metric, correlations mapped to [0, 1] by (r + 1) / 2"


def write_predictions(path: Path, ids: list[str], predictions: list, task: str) -> None:
    """CSV `id,prediction`, one row per input row in input order; written atomically."""
    fmt = TASKS[task].format_prediction

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "prediction"])
            writer.writerows((i, fmt(p)) for i, p in zip(ids, predictions))

    atomic_write(path, write)


def prediction_path(out_dir: Path, task: str, split: str) -> Path:
    return Path(out_dir) / f"{TASKS[task].output_prefix}-{split}-output.csv"
