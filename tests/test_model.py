"""Our encoder against transformers.BertModel: same weights, same outputs."""

import math

import pytest
import torch

from minbert.checkpoint import load_pretrained
from minbert import model as model_module
from minbert.model import BertConfig, BertModel, dropout, mean_pool

EPS = torch.finfo(torch.float32).eps


def padded_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, vocab_size, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padded rows
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


def assert_parity(ours: BertModel, checkpoint_dir) -> None:
    from transformers import BertModel as HFBert

    theirs = HFBert.from_pretrained(str(checkpoint_dir), attn_implementation="eager").eval()
    ours.eval()
    ids, mask, types = padded_batch(ours.config.vocab_size)
    with torch.no_grad():
        hidden, pooled = ours(ids, mask, types)
        ref = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    # Rounding, not a fixed 1e-5: the two models sum each layer's products (up to K =
    # intermediate_size per output) in different orders and kernels (SDPA against eager
    # attention, whatever BLAS and thread count the machine has). Independent fp32 roundings
    # add up like a random walk, about sqrt(K) eps of the values per layer and sqrt(L K) eps
    # over L layers. Measured with four kernel paths (AVX-512, AVX2, SSE4.2; 1 and 2 threads):
    # at most 0.04 (embedded) and 0.18 (tiny) of this. A LayerNorm eps of 1e-5 instead of
    # BERT's 1e-12 lands 10 (tiny) and 50 (embedded) times over it, a tanh GELU 80 (embedded).
    c = ours.config
    atol = math.sqrt(c.num_hidden_layers * c.intermediate_size) * EPS * float(ref.last_hidden_state[real].abs().max())
    torch.testing.assert_close(hidden[real], ref.last_hidden_state[real], atol=atol, rtol=0)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=atol, rtol=0)


def test_parity_tiny_random_checkpoint(tiny_checkpoint):
    assert_parity(load_pretrained(tiny_checkpoint), tiny_checkpoint)


def test_parity_embedded_checkpoint(embedded_dir):
    assert_parity(load_pretrained(embedded_dir), embedded_dir)


def test_parameter_names_are_hugging_face_keys(tiny_checkpoint):
    from safetensors.torch import load_file

    ours = set(BertModel(BertConfig.from_json(tiny_checkpoint / "config.json")).state_dict())
    theirs = set(load_file(str(tiny_checkpoint / "model.safetensors"))) - {"embeddings.position_ids"}
    assert ours == theirs


def test_padding_does_not_change_real_tokens(tiny_checkpoint):
    model = load_pretrained(tiny_checkpoint).eval()
    ids = torch.tensor([[101, 2023, 2003, 102]])
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = (padded != 0).long()
    with torch.no_grad():
        h1, p1 = model(ids)
        h2, p2 = model(padded, mask)
    torch.testing.assert_close(h1[0], h2[0, :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(p1, p2, atol=1e-5, rtol=0)


def test_dropout_active_only_in_training(tiny_checkpoint):
    model = load_pretrained(tiny_checkpoint)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    model.train()
    assert not torch.equal(model(ids)[1], model(ids)[1])
    model.eval()
    assert torch.equal(model(ids)[1], model(ids)[1])


def test_dropout_keeps_one_minus_p_scaled():
    """Our CPU dropout: each element kept with probability 1 - p (each of the four 16-bit lanes
    of a 64-bit draw too), kept ones scaled by 1 / (1 - p), so the mean is unchanged; gradients
    go through the same mask; the identity outside training."""
    torch.manual_seed(0)
    x = torch.ones(400, 1000, requires_grad=True)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    n = kept.numel()
    sd = math.sqrt(0.1 * 0.9 / n)
    assert abs(kept.float().mean().item() - 0.9) < 5 * sd  # 5 sigma: fails on a wrong rate, not by chance
    for lane in range(4):  # int16 lanes of each int64 word, in memory order
        lane_kept = kept.flatten()[lane::4].float().mean().item()
        assert abs(lane_kept - 0.9) < 5 * math.sqrt(0.1 * 0.9 / (n / 4)), lane
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0, training=True) is x
    assert not torch.equal(dropout(x, 0.5, True), dropout(x, 0.5, True))
    torch.manual_seed(1)
    a = dropout(x, 0.5, True)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.5, True))  # reproducible from torch's seed (resume relies on it)


def test_training_attention_is_sdpa_with_dropout(tiny_checkpoint, monkeypatch):
    """In training on the CPU, attention is written out (softmax, our dropout, times V); with the
    dropout made the identity it equals SDPA's result, padding masked."""
    model = load_pretrained(tiny_checkpoint)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2023, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    model.eval()
    with torch.no_grad():
        expected = model(ids, mask)[0]
    monkeypatch.setattr(model_module, "dropout", lambda x, p, training: x)
    for module in model.modules():  # the other dropouts off, the attention path still the training one
        if isinstance(module, model_module.Dropout):
            module.p = 0.0
    model.train()
    with torch.no_grad():
        got = model(ids, mask)[0]
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


def test_cpu_training_attention_adds_a_mask_equal_to_masking(tiny_checkpoint):
    """CPU training's written-out attention adds a 0/-inf mask (made once per forward) to the
    scores: its outputs and input gradients are bit for bit those of masking the scores with the
    boolean mask (what it did before), for a padding mask and a packed rows' mask."""
    model = load_pretrained(tiny_checkpoint).train()
    attn = model.encoder.layer[0].attention["self"]
    B, T, H = 3, 12, model.config.hidden_size
    x = torch.randn(B, T, H, generator=torch.Generator().manual_seed(0), requires_grad=True)
    padding = padded_batch(model.config.vocab_size)[1].bool()[:, None, None, :]  # (B, 1, 1, T)
    segments = torch.tensor([0] * 5 + [1] * 4 + [2] * 3).expand(B, T)
    packed = (segments[:, :, None] == segments[:, None, :])[:, None]  # (B, 1, T, T)

    def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (layer(x).view(B, T, attn.num_heads, attn.head_dim).transpose(1, 2)
                   for layer in (attn.query, attn.key, attn.value))  # fmt: skip
        scores = ((q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dim)).masked_fill(~mask, -math.inf)
        y = dropout(scores.softmax(dim=-1), attn.dropout_p, True) @ v
        return y.transpose(1, 2).reshape(B, T, H)

    for mask in (padding, packed):
        outputs, grads = [], []
        for form in (lambda x: masked(x, mask), lambda x: attn(x, model_module.additive_mask(mask))):
            torch.manual_seed(1)  # the same dropout mask on both
            y = form(x)
            outputs.append(y)
            grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, H)).sum(), x)[0])
        assert torch.equal(outputs[0], outputs[1]) and torch.equal(grads[0], grads[1])
    assert model_module.additive_mask(padding)[1, 0, 0].tolist() == [0.0] * 7 + [-math.inf] * 5


@pytest.mark.parametrize("path", ["sdpa", "written-out"])
def test_a_packed_row_equals_its_sequences_alone(tiny_checkpoint, monkeypatch, path):
    """Two sequences end to end in one row and a padding tail, with a (1, T, T) mask of who may
    attend to whom and positions restarting at the second: each token's vector is the one it
    has when its sequence is alone; on SDPA's path and on the written-out one of CPU training."""
    model = load_pretrained(tiny_checkpoint).eval()
    a, b = [101, 2023, 2003, 1037, 102], [101, 3231, 102]
    row = torch.tensor([a + b + [0, 0]])
    segments = torch.tensor([[0] * 5 + [1] * 3 + [2] * 2])
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]])
    if path == "written-out":
        monkeypatch.setattr(model_module, "dropout", lambda x, p, training: x)
        for module in model.modules():
            if isinstance(module, model_module.Dropout):
                module.p = 0.0
        model.train()
    with torch.no_grad():
        alone = [model(torch.tensor([s]))[0][0] for s in (a, b)]
        packed = model(row, segments[:, :, None] == segments[:, None, :], None, positions)[0][0]  # (T, H)
        torch.testing.assert_close(packed[:5], alone[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(packed[5:8], alone[1], atol=1e-5, rtol=0)
        assert not packed.isnan().any()  # the padding tail attends to itself
        leaky = model(row, torch.ones(1, 10, 10, dtype=torch.bool), None, positions)[0][0]
        assert (leaky[5:8] - alone[1]).abs().max() > 1e-3  # the mask is what keeps them apart


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="gpt2"):
        BertConfig.from_json(tmp_path / "config.json")


# ---------------------------------------------------------------------------------------
# Activation checkpointing (Encoder.gradient_checkpointing)


def checkpointing_pair(seed: int = 0) -> tuple[BertModel, BertModel]:
    """Two copies of one small random encoder with dropout on; the second recomputes its layers."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=1100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)  # fmt: skip
    plain, recomputing = BertModel(config), BertModel(config)
    recomputing.load_state_dict(plain.state_dict())
    recomputing.encoder.gradient_checkpointing = True
    return plain.train(), recomputing.train()


def step_gradients(model: BertModel, seed: int) -> dict[str, torch.Tensor]:
    """The gradients of one training step on a padded batch, from generator state `seed`."""
    ids, mask, types = padded_batch(model.config.vocab_size)
    target = torch.randn(ids.shape[0], model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks' generator
    hidden, pooled = model(ids, mask, types)
    loss = ((pooled - target) ** 2).mean() + hidden[mask.bool()].pow(2).mean()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def count_layer_forwards(model: BertModel) -> list[int]:
    """Calls of each layer's forward, counted by a wrapper (the recompute runs no module hooks)."""
    counts = [0] * len(model.encoder.layer)

    def counting(i: int, forward):
        def wrapped(*args):
            counts[i] += 1
            return forward(*args)

        return wrapped

    for i, layer in enumerate(model.encoder.layer):
        layer.forward = counting(i, layer.forward)
    return counts


def test_gradient_checkpointing_gives_the_same_gradients_with_dropout():
    # Equal to the bit, measured, and asserted with a margin of a few fp32 roundings only: the
    # recompute runs the same kernels on the same inputs (the generator restored, so the same
    # dropout masks), and each parameter's gradient is one layer's product, summed in the same
    # order either way. A different dropout mask in the recompute (preserve_rng_state=False)
    # moves gradients by about their own size (2.4 times the largest, measured), 1e6 times this.
    plain, recomputing = checkpointing_pair()
    want, got = step_gradients(plain, seed=7), step_gradients(recomputing, seed=7)
    assert want.keys() == got.keys() == {name for name, _ in plain.named_parameters()}
    for name in want:
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=4 * EPS * scale, msg=name)
    # The masks matter here: another seed moves the gradients far beyond that tolerance.
    other = step_gradients(plain, seed=8)
    name = "encoder.layer.0.intermediate.dense.weight"
    assert (other[name] - want[name]).abs().max() > 1e-3 * want[name].abs().max()


def test_gradient_checkpointing_recomputes_each_layer_in_training_only():
    plain, recomputing = checkpointing_pair()
    plain_counts, counts = count_layer_forwards(plain), count_layer_forwards(recomputing)
    step_gradients(plain, seed=7)
    step_gradients(recomputing, seed=7)
    assert plain_counts == [1, 1, 1] and counts == [2, 2, 2]  # forward, and again in the backward
    ids, mask, types = padded_batch(recomputing.config.vocab_size)
    counts[:] = [0, 0, 0]
    with torch.no_grad():  # training mode without gradients (a frozen encoder): nothing to recompute
        recomputing(ids, mask, types)
    assert counts == [1, 1, 1]
    recomputing.eval()
    hidden, pooled = recomputing(ids, mask, types)  # prediction: the switch does nothing
    hidden.sum().backward()
    assert counts == [2, 2, 2]
    with torch.no_grad():
        want = plain.eval()(ids, mask, types)
    assert torch.equal(hidden, want[0]) and torch.equal(pooled, want[1])


def test_gradient_checkpointing_is_set_from_the_model_config(tmp_path):
    from minbert.config import load_config
    from minbert.multitask import MultitaskBert

    assert load_config(None, []).model.gradient_checkpointing is False
    for value in (True, False):
        cfg = load_config(None, [f"model.gradient_checkpointing={str(value).lower()}"])
        model = MultitaskBert(checkpointing_pair()[0], cfg.model)
        assert model.bert.encoder.gradient_checkpointing is value
