"""Packed batches (train.packing): the rows `pack_batch` lays out, and the guarantee that the
heads see what they see with padded batches: per-sequence vectors, the loss and one step's
gradients equal up to fp32 rounding, for CLS and mean pooling, single texts, siamese and
cross-encoded pairs.

The tolerance, from the arithmetic: the packed forward computes the same sums over the same
terms, but BLAS blocks a (R*W, H) matmul differently from an (N*T, H) one and the softmax sums
rows of W keys (exact zeros beyond the sequence) where the padded one sums T; each such sum of
K fp32 terms of size ~1 may round differently by ~K * 2^-24 (K <= 64 here: 6e-6 for a worst-case
order, typically sqrt(K) * 2^-24 ~ 5e-7). Two layers and LayerNorm keep vectors of size ~1, so
1e-5 absolute covers it; a sequence attending to its row neighbours moves vectors by ~1e-1, which
each test checks too, so the tolerance cannot pass a packing that leaks across sequences.
"""

from __future__ import annotations

import random

import pytest
import torch

from minbert.config import ConfigError, load_config
from minbert.runs import build_model, encode_all, read_all
from minbert.tasks.data import pack_batch, pack_rows, pad_batch, padding_fraction
from minbert.training.loop import step_loss
from minbert.training.state import Run

ATOL = 1e-5
ENCODINGS = {  # task, model overrides
    "single": ("sst", []),
    "siamese": ("sts", ["model.pair_encoding=siamese"]),
    "cross": ("para", ["model.pair_encoding=cross"]),
}


def test_pack_rows_places_every_sequence_once_within_its_row():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 50))]
        width = rng.randint(max(lengths), 120)
        rows = pack_rows(lengths, width)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= width for row in rows)
        assert len(rows) <= 2 * sum(lengths) / width + 1  # first fit: no two rows are both at most half full


def test_pack_batch_lays_sequences_end_to_end():
    seqs = [[101, 5, 6, 102], [101, 7, 102], [101, 8, 9, 10, 11, 102], [101, 102]]
    types = [[0] * len(s[:-1]) + [1] for s in seqs]
    packed = pack_batch(seqs, types, pad_id=0, width=8)
    R, W = packed.input_ids.shape
    assert W == 8 and R == 2  # 6 + 2 in one row, 4 + 3 in the other
    flat_ids, flat_pos, flat_types = (t.flatten() for t in (packed.input_ids, packed.position_ids, packed.token_type_ids))
    ids, mask = pad_batch(seqs, 0)
    for n, s in enumerate(seqs):  # unpack finds every token, its position from its own start, its segment id
        where = packed.unpack[n, : len(s)]
        assert flat_ids[where].tolist() == s
        assert flat_pos[where].tolist() == list(range(len(s)))
        assert flat_types[where].tolist() == types[n]
        assert packed.segments.flatten()[where].eq(n).all()
    assert int((packed.input_ids == 0).sum()) == R * W - sum(map(len, seqs))  # padding at row ends only
    attention = packed.attention
    assert attention.shape == (R, W, W) and attention.sum(-1).min() >= 1  # every query sees a key: no NaN row
    same = packed.segments[:, :, None] == packed.segments[:, None, :]
    assert torch.equal(attention, same) and not attention.all()
    # a width below the longest sequence: rows as long as the longest
    assert pack_batch(seqs, None, 0, width=1).input_ids.shape[1] == 6
    assert padding_fraction([4, 3, 6, 2]) == 1 - 15 / 24 and padding_fraction([4, 3, 6, 2], 8) == 1 - 15 / 16


def ready(tiny_checkpoint, small_data_dir, extra: list[str], task: str):
    cfg = load_config(None, [f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}",
                             "train.batch_size=12", *extra])  # fmt: skip
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg)
    data = encode_all(read_all(cfg, {"train": (task,)}), tokenizer, cfg)["train"][task]
    return cfg, model.eval(), data


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_packed_forward_equals_padded_per_sequence(encoding, pooling, tiny_checkpoint, small_data_dir):
    task, extra = ENCODINGS[encoding]
    _, model, data = ready(tiny_checkpoint, small_data_dir, [*extra, f"model.pooling={pooling}"], task)
    indices = list(range(0, 36, 3))
    padded, packed = data.batch(indices), data.batch(indices, pack=0)
    assert packed.packed.input_ids.shape[0] < padded.input_ids.shape[0], "nothing was packed together"
    with torch.no_grad():
        want, got = model.embed(padded), model.embed(packed)
        assert want.shape == got.shape == (len(padded.input_ids), model.bert.config.hidden_size)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        torch.testing.assert_close(model(task, packed), model(task, padded), atol=ATOL, rtol=0)
        packed.packed.segments.zero_()  # every token attends to its whole row
        assert (model.embed(packed) - want).abs().max() > 100 * ATOL, "the tolerance cannot tell a leak"


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_one_packed_step_has_the_padded_steps_loss_and_gradients(encoding, tiny_checkpoint, small_data_dir):
    """Through the loop's step_loss (R-Drop's doubled batch, swapped pairs, CoSENT included where
    they apply); eval mode: dropout masks of two layouts could not be compared."""
    task, extra = ENCODINGS[encoding]
    extra = [*extra, "model.pooling=mean", "train.rdrop=0.5", "train.swap_pairs=true", "train.sts_loss=mse+cosent"]
    results = []
    for packing in ([], ["train.packing=true", "train.pack_length=64"]):
        cfg, model, data = ready(tiny_checkpoint, small_data_dir, [*extra, *packing], task)
        run = Run.bare(cfg, model, {task: data})
        loss = step_loss(run, task, list(range(12)), cfg.train.phases[0])
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_padded, grads_padded), (loss_packed, grads_packed) = results
    torch.testing.assert_close(loss_packed, loss_padded, atol=ATOL, rtol=0)
    assert grads_packed.keys() == grads_padded.keys() and "bert.encoder.layer.0.attention.self.query.weight" in grads_packed
    for name, grad in grads_padded.items():  # gradients relative to the largest of each tensor
        scale = max(float(grad.abs().max()), 1e-3)
        torch.testing.assert_close(grads_packed[name] / scale, grad / scale, atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["train.pack_length=64"], "train.packing is false"),
        (["train.packing=true", "train.pack_length=0"], "train.pack_length: 0 is out of range"),
        (["train.packing=true", "train.pack_length=5000"], "train.pack_length: 5000 is out of range"),
    ],
)
def test_bad_packing_settings_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)
    assert load_config(None, ["train.packing=true"]).train.pack_length is None
