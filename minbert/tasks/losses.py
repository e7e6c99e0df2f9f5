"""The losses of training: a task's own (its spec's, plus CoSENT for regression), R-Drop's
disagreement between two forwards, and distillation against a teacher's soft labels."""

from __future__ import annotations

import torch

from minbert.tasks.spec import TaskSpec


def distill_loss(kind: str, output: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """The loss against a teacher's soft labels: cross-entropy with its class probabilities,
    binary cross-entropy with its P(positive), or the squared error to its score."""
    if kind == "classification":
        return torch.nn.functional.cross_entropy(output, soft)
    if kind == "binary":
        return torch.nn.functional.binary_cross_entropy_with_logits(output, soft)
    return torch.nn.functional.mse_loss(output, soft)


def disagreement(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """R-Drop's term between two forwards of one batch: the symmetric KL divergence of their
    class distributions (a binary logit is the two-class distribution [0, logit]), or the
    squared difference of their scores."""
    if kind == "regression":
        return torch.nn.functional.mse_loss(a, b)
    if kind == "binary":
        a, b = (torch.stack([torch.zeros_like(x), x], dim=-1) for x in (a, b))
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    kl = torch.nn.functional.kl_div
    return 0.5 * (kl(la, lb, log_target=True, reduction="batchmean") + kl(lb, la, log_target=True, reduction="batchmean"))


def cosent_loss(scores: torch.Tensor, labels: torch.Tensor, scale: float = 20.0,
                span: tuple[float, float] = (0.0, 5.0)) -> torch.Tensor:  # fmt: skip
    """CoSENT (Su 2022): log(1 + sum over pairs with y_i > y_j of exp(scale (s_j - s_i))).
    A ranking loss on the predicted scores, mapped from `span` (STS-B's [0, 5]) onto [0, 1]."""
    low, high = span
    s = scores / (high - low) if low == 0 else (scores - low) / (high - low)
    diff = scale * (s[None, :] - s[:, None])  # (B, B): s_j - s_i at [i, j]
    diff = diff.masked_fill(~(labels[:, None] > labels[None, :]), float("-inf"))
    return torch.logsumexp(torch.cat([torch.zeros(1, device=s.device, dtype=s.dtype), diff.flatten()]), dim=0)


def task_loss(spec: TaskSpec, output: torch.Tensor, labels: torch.Tensor, sts_loss: str = "mse") -> torch.Tensor:
    """The task's declared loss; for a regression task, CoSENT instead of or added to MSE when
    declared (`loss: cosent | mse+cosent`), or for STS when train.sts_loss says so."""
    name = sts_loss if spec.name == "sts" and spec.loss_name == "mse" else spec.loss_name
    loss = spec.loss(output, labels)
    if name in ("cosent", "mse+cosent"):
        cosent = cosent_loss(output, labels, scale=20.0, span=spec.value_range)
        loss = cosent if name == "cosent" else loss + cosent
    return loss
