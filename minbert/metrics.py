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


def overall_score(sst_acc: float, para_acc: float, sts_r: float) -> float:
    """CS224N overall: the mean of SST accuracy, paraphrase accuracy and STS r mapped to [0, 1]."""
    return (sst_acc + para_acc + (sts_r + 1.0) / 2.0) / 3.0
