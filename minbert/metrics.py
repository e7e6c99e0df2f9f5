"""Task metrics and the CS224N overall score."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def accuracy(predictions: Sequence[float], labels: Sequence[float]) -> float:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"accuracy needs two equal, non-empty arrays; got {p.shape} and {y.shape}")
    return float((p == y).mean())


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson's r; 0.0 when either side is constant (r is undefined there)."""
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if p.shape != y.shape or p.size < 2:
        raise ValueError(f"pearson needs two equal arrays of 2+ values; got {p.shape} and {y.shape}")
    p, y = p - p.mean(), y - y.mean()
    denom = np.sqrt((p * p).sum() * (y * y).sum())
    return float((p * y).sum() / denom) if denom > 0 else 0.0


def overall_score(sst_acc: float, para_acc: float, sts_r: float) -> float:
    """CS224N overall: the mean of SST accuracy, paraphrase accuracy and STS r mapped to [0, 1]."""
    return (sst_acc + para_acc + (sts_r + 1.0) / 2.0) / 3.0
