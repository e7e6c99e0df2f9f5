"""The reference that minbert is measured against: what a user would write instead of it.

A plain PyTorch loop around `transformers.BertModel.from_pretrained` on the same embedded
checkpoint, in the style of the CS224N starter code:
- the slow Python `transformers.BertTokenizer`, run on every batch (padding=True: to the
  batch's longest sequence; truncation at 128 tokens);
- batches drawn uniformly at random (a random permutation per pass, no length bucketing);
- each side of a pair encoded by its own BertModel forward call; pooled output = pooler_output;
- minbert's own heads (minbert.tasks.heads) and losses (the seed tasks' TaskSpec.loss);
- torch.optim.AdamW(lr=3e-5, weight_decay=0.01), no fused kernel.

Not a script; train_throughput.py and predict_throughput.py import it.
"""

from __future__ import annotations

import random
import time

import torch
import transformers
from torch import nn

from minbert.checkpoint import default_checkpoint_dir
from minbert.tasks.data import Example
from minbert.tasks.heads import SIMILARITY_SCALE, SentimentMLP, SiamesePairHead
from minbert.tasks.spec import BUILTIN as TASKS, SST_CLASSES  # the seed's built-in tasks

from common import autocast

MAX_LENGTH = 128


class ReferenceModel(nn.Module):
    """A Hugging Face BertModel and the three minbert heads; one forward per sentence side."""

    def __init__(self, bert: transformers.BertModel, head_dropout: float):
        super().__init__()
        self.bert = bert
        hidden = bert.config.hidden_size
        self.heads = nn.ModuleDict({
            "sst": SentimentMLP(hidden, SST_CLASSES, head_dropout),
            "para": SiamesePairHead(hidden, head_dropout),
            "sts": SiamesePairHead(hidden, head_dropout, scale=SIMILARITY_SCALE),
        })  # fmt: skip

    def forward(self, task: str, sides: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        pooled = [self.bert(**side).pooler_output for side in sides]  # one call per side
        return self.heads[task](*pooled)


def load_reference(
    head_dropout: float, random_init_base: bool = False
) -> tuple[ReferenceModel, transformers.BertTokenizer]:
    """The embedded checkpoint through transformers (or a random bert-base: transformers'
    BertConfig() defaults, the same vocabulary), and the slow tokenizer of its vocab.txt."""
    ckpt = default_checkpoint_dir()
    tokenizer = transformers.BertTokenizer.from_pretrained(str(ckpt))
    if random_init_base:
        bert = transformers.BertModel(transformers.BertConfig())
    else:
        bert = transformers.BertModel.from_pretrained(str(ckpt))
    return ReferenceModel(bert, head_dropout), tokenizer


def make_optimizer(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)


def tokenize(tokenizer, examples: list[Example], device: str) -> tuple[list[dict[str, torch.Tensor]], float]:
    """One padded batch per text column, on the device; and the seconds the tokenizer took."""
    start = time.perf_counter()
    sides = [
        tokenizer([e.texts[s] for e in examples], padding=True, truncation=True, max_length=MAX_LENGTH,
                  return_tensors="pt")
        for s in range(len(examples[0].texts))
    ]  # fmt: skip
    seconds = time.perf_counter() - start
    return [{k: v.to(device) for k, v in side.items()} for side in sides], seconds


class RandomBatches:
    """Batches of a uniformly random permutation of range(n); a fresh permutation per pass."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.rng = n, batch_size, random.Random(seed)
        self.order: list[int] = []

    def next(self) -> list[int]:
        if not self.order:
            self.order = self.rng.sample(range(self.n), self.n)
        batch, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return batch


def train_step(model, tokenizer, optimizer, task: str, examples: list[Example], device: str, precision: str = "auto"):
    """Tokenise, forward, loss, backward, step (under `precision`: common.autocast). Returns
    (attention masks of the forwards, tokenizer seconds)."""
    sides, tok_seconds = tokenize(tokenizer, examples, device)
    train_on(model, optimizer, task, sides, [e.label for e in examples], device, precision)
    return [side["attention_mask"] for side in sides], tok_seconds


def train_on(model, optimizer, task: str, sides: list[dict[str, torch.Tensor]], labels: list, device: str,
             precision: str = "auto") -> None:  # fmt: skip
    """Forward, loss, backward, step on a batch already tokenised (`sides`: one per text column)."""
    targets = torch.tensor(labels, dtype=TASKS[task].label_dtype, device=device)
    with autocast(device, precision):
        loss = TASKS[task].loss(model(task, sides), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@torch.no_grad()
def predict(model, tokenizer, task: str, examples: list[Example], batch_size: int, device: str, precision: str = "auto"):
    """Predictions in input order, batch by batch; returns (predictions, tokenizer seconds)."""
    model.eval()
    preds: list = []
    tok_seconds = 0.0
    for start in range(0, len(examples), batch_size):
        sides, seconds = tokenize(tokenizer, examples[start : start + batch_size], device)
        tok_seconds += seconds
        with autocast(device, precision):
            output = model(task, sides)
        preds.extend(TASKS[task].predict(output).float().cpu().tolist())
    return preds, tok_seconds
