"""Attention over packed rows on the CPU: which mechanism train.packing should use.

What: self-attention forward + backward over R rows of W tokens, each row holding sequences
end to end (lengths drawn from LOW-HIGH tokens, packed by minbert.tasks.data.pack_batch, so
the rows are the ones training builds), each token attending to its own sequence only, by
- sdpa-mask: F.scaled_dot_product_attention with the (R, 1, W, W) boolean block-diagonal mask
  (what minbert uses: model.SelfAttention with Packed.attention);
- written-out: scores, masked_fill, softmax, times V (model.SelfAttention's CPU training path);
- flex-eager: torch.nn.attention.flex_attention with a BlockMask from the sequence ids, not
  compiled (torch warns that eagerly it materialises the full score matrix; on the CPU it has
  no backward, so it is also timed forward only, "-fwd", beside sdpa-mask's forward);
- nested: a nested-jagged tensor of the sequences (no padding at all) through SDPA;
- padded: SDPA over one padded row per sequence (B, 1, 1, T key mask): today's batches.
Outputs are checked equal (per token, padding aside) before timing; only the attention is
timed, forward and backward, on its input already in its layout (a leaf).
How: 1 torch thread; --rounds rounds, each mechanism once per round in a rotated order; ms is
the median over rounds; the ratio to sdpa-mask the median of the rounds' ratios.
Run (from the repository root):
    PYTHONPATH=. python benchmarks/packed_attention.py [--sequences 64] [--heads 4] [--head-dim 16]
        [--low 16] [--high 48] [--width 0] [--rounds 30]
--width 0: rows as long as the longest sequence (train.pack_length null).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from minbert.tasks.data import pack_batch, pad_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--low", type=int, default=16)
    parser.add_argument("--high", type=int, default=48)
    parser.add_argument("--width", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    rng = random.Random(0)
    lengths = [rng.randint(args.low, args.high) for _ in range(args.sequences)]
    packed = pack_batch([[1] * n for n in lengths], None, 0, args.width)
    R, W = packed.input_ids.shape
    N, T, nh, d = len(lengths), max(lengths), args.heads, args.head_dim
    tokens = torch.randn(sum(lengths), nh, d)  # every sequence's q = k = v source, one row per token
    mask_nt = torch.arange(T) < torch.tensor(lengths)[:, None]  # (N, T)
    flat_place = packed.unpack[mask_nt]  # (tokens,): each token's place in the flattened rows

    def rows_of(x: torch.Tensor) -> torch.Tensor:  # (tokens, nh, d) -> (R, nh, W, d)
        out = torch.zeros(R * W, nh, d).index_copy(0, flat_place, x)
        return out.view(R, W, nh, d).transpose(1, 2)

    def padded_of(x: torch.Tensor) -> torch.Tensor:  # (tokens, nh, d) -> (N, nh, T, d)
        out = torch.zeros(N, T, nh, d)
        out[mask_nt] = x
        return out.transpose(1, 2)

    block = packed.attention[:, None]  # (R, 1, W, W)
    segments = packed.segments

    def doc_mask(b, h, q, k):
        return segments[b, q] == segments[b, k]

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # Each mechanism: (its input layout from the tokens, attention in that layout, its output back
    # to one row per token). Only the attention (forward, backward) is timed, on a leaf input.
    def from_rows(y):  # (R, nh, W, d) -> (tokens, nh, d)
        return y.transpose(1, 2).reshape(R * W, nh, d)[flat_place]

    def written_out(q):
        scores = (q @ q.transpose(-2, -1)) / d**0.5
        return scores.masked_fill(~block, float("-inf")).softmax(-1) @ q

    def flex_eager(q):
        mask = create_block_mask(doc_mask, R, None, W, W, device="cpu")  # per batch: its sequence ids
        return flex_attention(q, q, q, block_mask=mask)

    def nested_of(x):
        return torch.nested.as_nested_tensor(list(x.split(lengths)), layout=torch.jagged).transpose(1, 2)  # (N, nh, j, d)

    def from_nested(y):
        return torch.cat(y.transpose(1, 2).unbind())

    sdpa_rows = (rows_of, lambda q: F.scaled_dot_product_attention(q, q, q, attn_mask=block), from_rows)
    mechanisms = {
        "sdpa-mask": sdpa_rows,
        "written-out": (rows_of, written_out, from_rows),
        "flex-eager": (rows_of, flex_eager, from_rows),
        "nested": (nested_of, lambda q: F.scaled_dot_product_attention(q, q, q), from_nested),
        "padded": (padded_of, lambda q: F.scaled_dot_product_attention(q, q, q, attn_mask=mask_nt[:, None, None, :]),
                   lambda y: y.transpose(1, 2)[mask_nt]),
        "sdpa-mask-fwd": sdpa_rows,
        "flex-eager-fwd": (rows_of, flex_eager, from_rows),
    }  # fmt: skip
    want = mechanisms["padded"][2](mechanisms["padded"][1](padded_of(tokens)))
    failed = {}

    def step(name: str) -> float:
        layout, attend, _ = mechanisms[name]
        q = layout(tokens).detach().requires_grad_(not name.endswith("-fwd"))
        start = time.perf_counter()
        y = attend(q)
        if y.requires_grad:
            y.backward(torch.ones_like(y))
        return 1000 * (time.perf_counter() - start)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (layout, attend, back) in list(mechanisms.items()):
            try:
                torch.testing.assert_close(back(attend(layout(tokens))), want, atol=1e-5, rtol=0)
                step(name)
            except Exception as e:  # reported, not timed
                failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                del mechanisms[name]
        times = {name: [] for name in mechanisms}
        names = list(mechanisms)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(step(name))
    print(f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; torch {torch.__version__}, 1 thread")
    print(f"{N} sequences of {args.low}-{args.high} tokens ({sum(lengths)} tokens), {nh} heads x {d}; packed: {R} rows of "
          f"{W} (padding {1 - sum(lengths) / (R * W):.1%}); padded: {N} rows of {T} (padding "
          f"{1 - sum(lengths) / (N * T):.1%}); forward + backward (-fwd: forward only), median of {args.rounds} rounds")  # fmt: skip
    base = times["sdpa-mask"]
    for name, ms in times.items():
        ratio = statistics.median(a / b for a, b in zip(ms, base))
        print(f"{name:<12} {statistics.median(ms):8.3f} ms   x{ratio:.2f} of sdpa-mask")
    for name, why in failed.items():
        print(f"{name:<12} not timed: {why}")


if __name__ == "__main__":
    main()
