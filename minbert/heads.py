"""Task heads on top of sentence vectors (the seed report, sec. 4, plus its baselines).

A siamese head gets two vectors u, v (each side of a pair encoded separately); a single
head gets one vector (a sentence, or a cross-encoded pair `[CLS] a [SEP] b [SEP]`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIMILARITY_SCALE = 5.0  # STS-B scores lie in [0, 5]


class SentimentMLP(nn.Module):
    """Seed report: pooled -> Linear -> ReLU -> Linear -> ReLU -> Dropout -> Linear(classes)."""

    def __init__(self, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )  # fmt: skip

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(u)  # (B, classes)


class LinearClassifier(nn.Module):
    """Dropout -> Linear: the report's single-layer sentiment baseline, and the cross-encoder head."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, num_outputs)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(u))


class SiamesePairHead(nn.Module):
    """Dropout on u and v, features [|u - v|, u * v], Linear -> one logit.

    |u - v| is small and u * v large for similar sentences (seed report, sec. 4).
    With `scale`, the logit becomes a score sigmoid(z) * scale (the report's STS head).
    """

    def __init__(self, hidden: int, dropout: float, scale: float | None = None):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * hidden, 1)
        self.scale = scale

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        u, v = self.dropout(u), self.dropout(v)
        z = self.linear(torch.cat([(u - v).abs(), u * v], dim=-1)).squeeze(-1)  # (B,)
        return z if self.scale is None else torch.sigmoid(z) * self.scale


class CrossPairHead(nn.Module):
    """Dropout -> Linear -> one logit on a cross-encoded pair; optional sigmoid * scale."""

    def __init__(self, hidden: int, dropout: float, scale: float | None = None):
        super().__init__()
        self.inner = LinearClassifier(hidden, 1, dropout)
        self.scale = scale

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z = self.inner(u).squeeze(-1)  # (B,)
        return z if self.scale is None else torch.sigmoid(z) * self.scale


class CosineSimilarityHead(nn.Module):
    """The report's baseline STS head: cosine similarity mapped onto [0, 5]. No parameters."""

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (F.cosine_similarity(u, v, dim=-1) + 1.0) * (SIMILARITY_SCALE / 2.0)  # (B,)
