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
    """Dropout on u and v, features [|u - v|, u * v], Linear -> one logit (or K logits).

    |u - v| is small and u * v large for similar sentences (seed report, sec. 4).
    With `scale`, the logit becomes a score sigmoid(z) * scale + offset (the report's STS head,
    scale 5, offset 0: a score in [offset, offset + scale]).
    """

    def __init__(self, hidden: int, dropout: float, scale: float | None = None, offset: float = 0.0, num_outputs: int = 1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * hidden, num_outputs)
        self.scale, self.offset, self.num_outputs = scale, offset, num_outputs

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        u, v = self.dropout(u), self.dropout(v)
        z = self.linear(torch.cat([(u - v).abs(), u * v], dim=-1))  # (B, outputs)
        z = z.squeeze(-1) if self.num_outputs == 1 else z  # (B,) for one output
        return z if self.scale is None else _to_range(z, self.scale, self.offset)


class CrossPairHead(nn.Module):
    """Dropout -> Linear -> one logit on one vector (a cross-encoded pair, or a sentence);
    optional sigmoid * scale + offset."""

    def __init__(self, hidden: int, dropout: float, scale: float | None = None, offset: float = 0.0):
        super().__init__()
        self.inner = LinearClassifier(hidden, 1, dropout)
        self.scale, self.offset = scale, offset

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z = self.inner(u).squeeze(-1)  # (B,)
        return z if self.scale is None else _to_range(z, self.scale, self.offset)


class CosineSimilarityHead(nn.Module):
    """The report's baseline STS head: cosine similarity mapped onto [offset, offset + scale]
    ([0, 5] for STS). No parameters."""

    def __init__(self, scale: float = SIMILARITY_SCALE, offset: float = 0.0):
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = (F.cosine_similarity(u, v, dim=-1) + 1.0) * (self.scale / 2.0)  # (B,)
        return s + self.offset if self.offset else s


def _to_range(z: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    s = torch.sigmoid(z) * scale
    return s + offset if offset else s  # no add for offset 0: the seed's STS head bit for bit
