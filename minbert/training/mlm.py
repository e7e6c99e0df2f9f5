"""Further masked-language-model pre-training on the task sentences (Sun et al. 2019, "How to
fine-tune BERT for text classification?", within-task further pre-training).

BERT's masking (Devlin et al. 2019, sec. 3.1): 15% of the non-special tokens are chosen; of
those, 80% become [MASK], 10% a random token, 10% stay as they are; the loss is on the chosen
ones only. Only training-split sentences are used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minbert.model import BertConfig, BertModel

IGNORE = -100


class MaskedLMHead(nn.Module):
    """transform (dense -> GELU -> LayerNorm), then logits against the tied word embeddings."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.ModuleDict({
            "dense": nn.Linear(config.hidden_size, config.hidden_size),
            "LayerNorm": nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
        })  # fmt: skip
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.word_embeddings = [word_embeddings]  # a list, so the tied weight is not registered twice

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.transform["LayerNorm"](F.gelu(self.transform["dense"](hidden)))  # (N, H)
        return h @ self.word_embeddings[0].weight.T + self.bias  # (N, vocab)


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    prob: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking. `maskable` is False at [CLS], [SEP] and padding.
    Returns (corrupted input ids, labels with IGNORE where no prediction is asked)."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < prob) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    roll = torch.rand(input_ids.shape, generator=generator)
    corrupted = input_ids.clone()
    corrupted[chosen & (roll < 0.8)] = mask_id
    random_pos = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted[random_pos] = torch.randint(vocab_size, input_ids.shape, generator=generator)[random_pos]
    return corrupted, labels


def mlm_loss(bert: BertModel, head: MaskedLMHead, input_ids, attention_mask, labels: torch.Tensor) -> torch.Tensor:
    """The loss at the chosen positions. `labels` is on the host, where the masking was drawn:
    which positions to predict is known there, so picking them makes the host wait for nothing
    (a boolean index on the device would: its size is read back)."""
    hidden, _ = bert(input_ids, attention_mask)
    picked = (labels.view(-1) != IGNORE).nonzero().squeeze(1)  # on the host
    if len(picked) == 0:
        return hidden.sum() * 0.0
    device = hidden.device
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, picked.to(device, non_blocking=True))
    # vocabulary logits only where a prediction is asked: (N, vocab)
    return F.cross_entropy(head(hidden), labels.view(-1)[picked].to(device, non_blocking=True))


class MaskedLMTask:
    """The distinct training sentences of some tasks (both sides of pairs), as an MLM task.

    Looks like an EncodedTask to the batch streams (`lengths`, `len`), and owns the MLM head.
    """

    def __init__(self, encoded_tasks, bert: BertModel, mask_id: int, pad_id: int):
        seen: dict[tuple[int, ...], None] = {}
        for data in encoded_tasks:
            for side in data.sides:
                for seq in side:
                    seen.setdefault(tuple(seq), None)
        self.seqs = [list(s) for s in seen]
        self.lengths = [len(s) for s in self.seqs]
        self.mask_id, self.pad_id = mask_id, pad_id
        self.head = MaskedLMHead(bert.config, bert.embeddings.word_embeddings)

    def __len__(self) -> int:
        return len(self.seqs)

    def loss(self, bert: BertModel, indices: list[int], device) -> torch.Tensor:
        from minbert.tasks.data import has_padding, pad_batch

        seqs = [self.seqs[i] for i in indices]
        ids, mask = pad_batch(seqs, self.pad_id)
        # [CLS] is first and [SEP] last in every sequence; padding is masked out too.
        maskable = mask.bool().clone()
        maskable[:, 0] = False
        maskable[torch.arange(len(indices)), mask.sum(1) - 1] = False
        inputs, labels = mask_tokens(ids, maskable, self.mask_id, bert.config.vocab_size)
        encoder_mask = mask.to(device) if has_padding(seqs) else None  # decided on the host
        return mlm_loss(bert, self.head.to(device), inputs.to(device), encoder_mask, labels)
