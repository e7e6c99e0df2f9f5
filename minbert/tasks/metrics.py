"""Task metrics and the CS224N overall score."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class DivergedError(ValueError):
    """Predictions that are NaN or infinite: the model has diverged, and no score of it is meaningful."""


def _check_finite(p: np.ndarray, metric: str) -> None:
    if p.dtype.kind in "fc" and not np.isfinite(p).all():
        bad = int((~np.isfinite(p)).sum())
        raise DivergedError(f"{metric}: {bad} of {p.size} predictions are NaN or infinite: the model has diverged")


def accuracy(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """The fraction of predictions equal to their label; NaN or infinite predictions raise DivergedError."""
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"accuracy needs two equal, non-empty arrays; got {p.shape} and {y.shape}")
    _check_finite(p, "accuracy")
    return float((p == y).mean())


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson's r; 0.0 when either side is constant (r is undefined there). NaN or infinite
    predictions raise DivergedError: a diverged model must never get a finite score."""
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if p.shape != y.shape or p.size < 2:
        raise ValueError(f"pearson needs two equal arrays of 2+ values; got {p.shape} and {y.shape}")
    _check_finite(p, "pearson")
    p, y = p - p.mean(), y - y.mean()
    denom = np.sqrt((p * p).sum() * (y * y).sum())
    return float((p * y).sum() / denom) if denom > 0 else 0.0


def macro_f1(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """The mean over the classes present (in labels or predictions) of each class's F1."""
    p, y = np.asarray(predictions), np.asarray(labels)
    accuracy(p, y)  # the same shape and finiteness checks
    f1s = []
    for c in np.union1d(p, y):
        tp, fp, fn = np.sum((p == c) & (y == c)), np.sum((p == c) & (y != c)), np.sum((p != c) & (y == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def matthews(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Matthews correlation (Gorodkin's K-class form; the usual MCC for two classes); 0.0 where
    it is undefined (one class only on either side)."""
    p, y = np.asarray(predictions), np.asarray(labels)
    accuracy(p, y)
    classes = np.union1d(p, y)
    confusion = np.array([[np.sum((y == a) & (p == b)) for b in classes] for a in classes], dtype=np.float64)
    t, pk, n, correct = confusion.sum(1), confusion.sum(0), confusion.sum(), np.trace(confusion)
    denom = np.sqrt((n * n - (pk * pk).sum()) * (n * n - (t * t).sum()))
    return float((correct * n - (t * pk).sum()) / denom) if denom > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / np.bincount(inverse))[inverse]


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the ranks."""
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    pearson(p, y)  # the same checks
    return pearson(_ranks(p), _ranks(y))


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}
CORRELATIONS = ("matthews", "pearson", "spearman")  # in [-1, 1]: mapped to [0, 1] by (x + 1) / 2 in an overall score


def mean_primary(primaries: dict[str, tuple[str, float]]) -> float:
    """The overall score of any task set: the mean of each task's primary metric, correlations
    mapped to [0, 1] as the CS224N formula maps STS r. `primaries`: task -> (metric, value)."""
    return float(np.mean([(v + 1.0) / 2.0 if m in CORRELATIONS else v for m, v in primaries.values()]))


def overall_score(sst_acc: float, para_acc: float, sts_r: float) -> float:
    """CS224N overall: the mean of SST accuracy, paraphrase accuracy and STS r mapped to [0, 1]."""
    return (sst_acc + para_acc + (sts_r + 1.0) / 2.0) / 3.0
