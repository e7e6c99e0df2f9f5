"""A task's data tokenised once (`EncodedTask`) and cut into padded batches (`Batch`).

A batch of sentence pairs encoded siamese-style puts both sides through the encoder in one
forward: the (2B, T) batch holds the B first sentences, then the B second ones. Cross-encoded
pairs are one sequence each, `[CLS] a [SEP] b [SEP]`, with segment ids.

Long texts (`stride` given, single-text tasks only): a text longer than max_length becomes
several rows, its overlapping windows (`WordPieceTokenizer.encode_windows`). Rows are what
batches hold and `len()` counts; `owner` maps a row to its example, whose label it carries, and
`mean_over_windows` turns the rows' head outputs back into one per example. Pairs keep truncation.

Packed batches (`batch(..., pack=W)`, train.packing): the batch's sequences also laid end to end
in rows of at least W tokens (`data.pack_batch`), which the encoder reads instead of the padded
rows; each sequence attends to itself only and is pooled alone, so the heads see the vectors
the padded batch gives, up to float rounding (tests/tasks/test_packing.py).

Length buckets (`length_buckets`, train.length_buckets): every batch is padded up to the
smallest bucket that holds its longest row (max_length is the last bucket), so batches come in
a few lengths only: what a compiled encoder with static shapes needs (one graph per shape).
The extra positions are masked padding like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minbert.tasks.data import Example, Packed, bucket_length, has_padding, pack_batch, pad_batch
from minbert.tasks.spec import TaskSpec
from minbert.tokenizer import WordPieceTokenizer


@dataclass
class Batch:
    input_ids: torch.Tensor | None  # (N, T); N = 2B for a siamese pair batch; None when packed
    attention_mask: torch.Tensor  # (N, T) (packed: packed.mask, the same tensor)
    token_type_ids: torch.Tensor | None  # (N, T) for cross-encoded pairs, not packed
    siamese: bool
    labels: torch.Tensor | None  # (B,) or (B, ...) when labelled
    indices: list[int]  # positions of the examples in their EncodedTask
    padded: bool = True  # some sequence is shorter than T (known on the host, from the lengths)
    packed: Packed | None = None  # the same sequences packed in rows, which the encoder then reads

    @property
    def encoder_mask(self) -> torch.Tensor | None:
        """The attention mask the encoder needs: None for a batch without padding."""
        return self.attention_mask if self.padded else None

    def to(self, device: torch.device | str) -> "Batch":
        pin = torch.device(device).type == "cuda"  # pinned host memory: asynchronous copies

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return (t.pin_memory() if pin else t).to(device, non_blocking=True)

        if self.packed is not None:  # its mask moved once, with the rows
            packed = self.packed.to(move)
            return Batch(None, packed.mask, None, self.siamese, move(self.labels), self.indices, self.padded, packed)
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.token_type_ids), self.siamese,
                     move(self.labels), self.indices, self.padded)  # fmt: skip

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the batch holds (for a side stream's record_stream)."""
        held = [self.input_ids, self.token_type_ids, self.labels]
        held += self.packed.tensors() if self.packed is not None else [self.attention_mask]
        return [t for t in held if t is not None]


class EncodedTask:
    """One split of one task, tokenised once. Holds ids, token sequences and labels."""

    def __init__(
        self,
        spec: TaskSpec,
        examples: list[Example],
        tokenizer: WordPieceTokenizer,
        pair_encoding: str = "siamese",
        max_length: int = 128,
        stride: int | None = None,
        length_buckets: list[int] | tuple[int, ...] | None = None,
    ):
        self.spec = spec
        self.ids = [e.id for e in examples]
        self.pad_id = tokenizer.pad_id
        # The lengths batches are padded to (None: each batch's longest row); max_length closes the list.
        self.buckets = None if not length_buckets else tuple(sorted({*length_buckets, max_length}))
        labelled = examples[0].label is not None
        self.labels = torch.tensor([e.label for e in examples], dtype=spec.label_dtype) if labelled else None
        self.soft: torch.Tensor | None = None  # a teacher's soft labels, row i for example i (distillation)
        self.siamese = spec.is_pair and pair_encoding == "siamese"
        self.cross = spec.is_pair and not self.siamese  # [CLS] a [SEP] b [SEP]: one sequence per pair
        self.types: list[list[int]] | None = None
        self._swapped: tuple[list[list[int]], list[list[int]]] | None = None  # [CLS] b [SEP] a [SEP], made on first use
        self._swap_inputs = (tokenizer, [e.texts for e in examples], max_length) if self.cross else None
        self.owner: list[int] | None = None  # row -> example, where texts are cut into windows
        if not spec.is_pair and stride is not None:
            windows = tokenizer.encode_windows([e.texts[0] for e in examples], max_length, stride)
            self.sides = [[w for ws in windows for w in ws]]
            self.owner = [i for i, ws in enumerate(windows) for _ in ws]
        elif not spec.is_pair:
            self.sides = [tokenizer.encode([e.texts[0] for e in examples], max_length)]
        elif self.siamese:
            self.sides = [tokenizer.encode([e.texts[i] for e in examples], max_length) for i in (0, 1)]
        else:
            pairs = tokenizer.encode_pairs([e.texts[0] for e in examples], [e.texts[1] for e in examples], max_length)
            self.sides = [[ids for ids, _ in pairs]]
            self.types = [types for _, types in pairs]
        # The padded length a batch of this example will need: what bucketing sorts on.
        self.lengths = [max(len(side[i]) for side in self.sides) for i in range(len(self.sides[0]))]

    def __len__(self) -> int:
        """The rows: the examples, or their windows where texts are cut into windows."""
        return len(self.sides[0])

    def examples_of(self, rows: list[int]) -> list[int]:
        """The example each row belongs to (for its label, soft label, id)."""
        return rows if self.owner is None else [self.owner[r] for r in rows]

    def mean_over_windows(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-row head outputs (rows, ...) -> per-example (examples, ...): the mean over each
        example's windows (of the logits, for classes). Unchanged without windows; an example of
        one window keeps its row's value exactly (0 + x, then / 1)."""
        if self.owner is None:
            return outputs
        owner = torch.tensor(self.owner)
        sums = torch.zeros((len(self.ids), *outputs.shape[1:]), dtype=outputs.dtype).index_add_(0, owner, outputs)
        counts = torch.bincount(owner, minlength=len(self.ids)).to(outputs.dtype)
        return sums / counts.view(-1, *[1] * (outputs.dim() - 1))

    def padded_length(self, seqs: list[list[int]]) -> int | None:
        """The length a batch of `seqs` is padded to: its bucket; None (the longest) without buckets."""
        return None if self.buckets is None else bucket_length(max(len(s) for s in seqs), self.buckets)

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(input_ids, attention_mask, padded): `seqs` padded to their batch length."""
        length = self.padded_length(seqs)
        return *pad_batch(seqs, self.pad_id, length), has_padding(seqs, length)

    def _type_seqs(self, indices: list[int], swap: list[bool] | None = None) -> list[list[int]] | None:
        """The segment ids of cross-encoded pairs, each in its own order or the swapped one; None
        for single sequences."""
        if self.types is None:
            return None
        return [self._pick(1, i, s) for i, s in zip(indices, swap or [False] * len(indices))]

    def _token_types(self, indices: list[int], swap: list[bool] | None = None, length: int | None = None) -> torch.Tensor | None:
        """Padded (to `length`) segment ids of cross-encoded pairs; None for single sequences."""
        types = self._type_seqs(indices, swap)
        return None if types is None else pad_batch(types, 0, length)[0]

    def _pick(self, part: int, i: int, swapped: bool) -> list[int]:
        """Pair i's ids (part 0) or segment ids (part 1), in its own order or the swapped one."""
        if not swapped:
            return (self.sides[0] if part == 0 else self.types)[i]
        if self._swapped is None:
            tokenizer, texts, max_length = self._swap_inputs
            pairs = tokenizer.encode_pairs([t[1] for t in texts], [t[0] for t in texts], max_length)
            self._swapped = ([ids for ids, _ in pairs], [types for _, types in pairs])
        return self._swapped[part][i]

    def side_batch(self, side: int, indices: list[int]) -> Batch:
        """One side of the pairs alone (or the sentences / cross-encoded pairs), unlabelled."""
        seqs = [self.sides[side][i] for i in indices]
        input_ids, mask, padded = self._pad(seqs)
        return Batch(input_ids, mask, self._token_types(indices, None, input_ids.shape[1]), False, None, indices, padded)

    def batch(self, indices: list[int], swap: list[bool] | None = None, pack: int | None = None) -> Batch:
        """The examples at `indices`, padded; `swap` (cross-encoded pairs): which pairs to encode
        in the other order, [CLS] b [SEP] a [SEP]; `pack`: also packed in rows of max(pack,
        longest sequence) tokens, for the encoder (None: not packed)."""
        if swap is not None and not self.cross:
            raise ValueError(f"{self.spec.name}: only cross-encoded pairs can be swapped")
        if swap is None:
            seqs = [side[i] for side in self.sides for i in indices]  # siamese: all a's, then all b's
        else:
            seqs = [self._pick(0, i, s) for i, s in zip(indices, swap)]
        labels = self.labels[self.examples_of(indices)] if self.labels is not None else None
        if pack is not None:  # the encoder reads the rows: no padded ids built, only the padded mask (pooling's)
            packed = pack_batch(seqs, self._type_seqs(indices, swap), self.pad_id, pack)
            return Batch(None, packed.mask, None, self.siamese, labels, indices, has_padding(seqs), packed)
        input_ids, mask, padded = self._pad(seqs)
        token_type_ids = self._token_types(indices, swap, input_ids.shape[1])
        return Batch(input_ids, mask, token_type_ids, self.siamese, labels, indices, padded)
