"""The multi-task model: one shared BERT encoder and one head per task of the run's `TaskSet`,
which the model carries (`model.tasks`): whoever holds the model knows its tasks."""

from __future__ import annotations

import torch
from torch import nn

from minbert.config import ModelConfig
from minbert.model import BertModel, mean_pool
from minbert.tasks.encoding import Batch, EncodedTask
from minbert.tasks.heads import CosineSimilarityHead, CrossPairHead, LinearClassifier, SentimentMLP, SiamesePairHead
from minbert.tasks.spec import TaskSet, TaskSpec


def build_head(spec: TaskSpec, cfg: ModelConfig, hidden: int) -> nn.Module:
    """A task's head: what its declaration names, else by its kind and input (the seed's heads
    for the seed's tasks: the 2-layer sentiment MLP, siamese or cross pair heads, sigmoid * 5)."""
    p = cfg.head_dropout
    siamese = spec.is_pair and (spec.pair_encoding or cfg.pair_encoding) == "siamese"
    if spec.kind == "classification":
        head = spec.head or ("pair" if siamese else cfg.sentiment_head)
        if head == "pair":
            return SiamesePairHead(hidden, p, num_outputs=spec.num_classes)
        return {"mlp": SentimentMLP, "linear": LinearClassifier}[head](hidden, spec.num_classes, p)
    if spec.kind == "binary":
        return SiamesePairHead(hidden, p) if siamese else CrossPairHead(hidden, p)
    low, high = spec.value_range
    if not siamese:
        return CrossPairHead(hidden, p, scale=high - low, offset=low)
    if (spec.head or cfg.similarity_head) == "cosine":
        return CosineSimilarityHead(high - low, low)
    return SiamesePairHead(hidden, p, high - low, low)


class MultitaskBert(nn.Module):
    """The encoder and a head per task (`tasks`, default the seed's three), in the run's order."""

    def __init__(self, bert: BertModel, cfg: ModelConfig, tasks: TaskSet | None = None):
        super().__init__()
        self.cfg = cfg
        self.bert = bert
        bert.encoder.gradient_checkpointing = cfg.gradient_checkpointing  # training only (model.Encoder)
        self.tasks = tasks if tasks is not None else TaskSet.seed()
        self.heads = nn.ModuleDict({name: build_head(spec, cfg, bert.config.hidden_size) for name, spec in self.tasks.items()})

    def embed(self, batch: Batch) -> torch.Tensor:
        """One vector per input sequence: (N, H)."""
        if batch.packed is not None:
            return self.embed_packed(batch)
        hidden, pooled = self.bert(batch.input_ids, batch.encoder_mask, batch.token_type_ids)
        return pooled if self.cfg.pooling == "cls" else mean_pool(hidden, batch.attention_mask)

    def embed_packed(self, batch: Batch) -> torch.Tensor:
        """`embed` of a packed batch: the encoder over the rows, then each sequence's token
        vectors gathered back into a padded row of its own (only [CLS], for CLS pooling) and
        pooled as `embed` pools: (N, H)."""
        p = batch.packed
        rows, _ = self.bert(p.input_ids, p.attention, p.token_type_ids, p.position_ids)  # (R, W, H)
        tokens = rows.flatten(0, 1)  # (R * W, H); index_select: its backward (index_add_) is the fast one
        if self.cfg.pooling == "cls":
            return self.bert.pooler(tokens.index_select(0, p.unpack[:, 0]).unsqueeze(1))  # [CLS] of each: (N, 1, H) -> (N, H)
        N, T = p.unpack.shape
        return mean_pool(tokens.index_select(0, p.unpack.flatten()).view(N, T, -1), batch.attention_mask)  # (N, T, H) -> (N, H)

    @staticmethod
    def split(vectors: torch.Tensor, siamese: bool) -> tuple[torch.Tensor, ...]:
        """(2B, H) -> (u, v) for a siamese batch; (B, H) -> (u,) otherwise."""
        return tuple(vectors.chunk(2)) if siamese else (vectors,)

    def forward(
        self,
        task: str,
        batch: Batch | None = None,
        features: tuple[torch.Tensor, ...] | None = None,
        frozen_encoder: bool = False,
    ) -> torch.Tensor:
        """The task head's output for a batch, or for cached encoder vectors (`features`).
        Every training path goes through here, so DistributedDataParallel sees it."""
        if features is None:
            if frozen_encoder:
                with torch.no_grad():
                    vectors = self.embed(batch)
            else:
                vectors = self.embed(batch)
            features = self.split(vectors, batch.siamese)
        return self.heads[task](*features)

    def predict_batch(self, task: str, data: EncodedTask, indices: list[int], device: torch.device) -> torch.Tensor:
        """Head outputs for prediction: one forward, or (model.symmetric_predict, cross-encoded
        pairs) the mean of the outputs of both orders of each pair."""
        out = self(task, data.batch(indices).to(device))
        if self.cfg.symmetric_predict and data.cross:
            out = (out + self(task, data.batch(indices, swap=[True] * len(indices)).to(device))) / 2
        return out
