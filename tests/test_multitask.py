"""The shared-encoder model: pooling, siamese and cross-encoded pairs, optimizer groups, schedules."""

import pytest
import torch

from minbert.config import ModelConfig, PhaseConfig
from minbert.tasks.data import Example
from minbert.model import BertConfig, BertModel
from minbert.multitask import MultitaskBert
from minbert.tasks.encoding import EncodedTask
from minbert.tasks import BUILTIN
from minbert.tokenizer import WordPieceTokenizer
from minbert.tasks.losses import cosent_loss
from minbert.training.loop import layer_id, lr_lambda, make_optimizer

PAIRS = [Example("p1", ("How do I cook rice?", "What is the way to cook rice?"), 1.0),
         Example("p2", ("Is the sky blue?", "Why?"), 0.0)]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return WordPieceTokenizer(embedded_dir / "vocab.txt")


def small_model(**model_cfg) -> MultitaskBert:
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))
    return MultitaskBert(bert, ModelConfig(**model_cfg))


def test_cross_encoder_sees_segments_0_and_1(tokenizer):
    data = EncodedTask(BUILTIN["para"], PAIRS, tokenizer, pair_encoding="cross")
    batch = data.batch([0, 1])
    assert batch.input_ids.shape[0] == 2 and not batch.siamese
    ids, types, mask = batch.input_ids[1], batch.token_type_ids[1], batch.attention_mask[1]
    sep = tokenizer.sep_id
    first_sep = (ids == sep).nonzero()[0].item()
    assert types[: first_sep + 1].eq(0).all()  # [CLS] a [SEP]
    assert types[first_sep + 1 : int(mask.sum())].eq(1).all()  # b [SEP]
    out = small_model(pair_encoding="cross")("para", batch)
    assert out.shape == (2,)


def test_siamese_batch_stacks_both_sides(tokenizer):
    data = EncodedTask(BUILTIN["sts"], [Example(e.id, e.texts, 3.0) for e in PAIRS], tokenizer)
    batch = data.batch([0, 1])
    assert batch.siamese and batch.input_ids.shape[0] == 4 and batch.token_type_ids is None
    assert batch.input_ids[2, : len(data.sides[1][0])].tolist() == data.sides[1][0]
    model = small_model()
    score = model("sts", batch)
    assert score.shape == (2,) and (0 <= score).all() and (score <= 5).all()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_options(tokenizer, pooling):
    data = EncodedTask(BUILTIN["sst"], [Example("s", ("a fine film",), 3), Example("t", ("bad",), 0)], tokenizer)
    model = small_model(pooling=pooling).eval()
    batch = data.batch([0, 1])
    vectors = model.embed(batch)
    hidden, pooled = model.bert(batch.input_ids, batch.attention_mask)
    if pooling == "cls":
        torch.testing.assert_close(vectors, pooled)
    else:
        torch.testing.assert_close(vectors[1], hidden[1, :3].mean(0))  # [CLS] bad [SEP], no padding
    assert model("sst", batch).shape == (2, 5)


def test_layerwise_lr_decay_and_head_lr():
    model = small_model()
    opt = make_optimizer(model, PhaseConfig(lr=1e-4, head_lr=1e-3, layer_lr_decay=0.5), fused=False)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["heads.sst.net.0.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(named["bert.pooler.dense.weight"])] == pytest.approx(1e-4)  # top: decay^0
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(0.5e-4)
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(0.25e-4)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(0.125e-4)
    assert layer_id("bert.encoder.layer.1.attention.self.query.weight", 2) == 2
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd_of[id(named["bert.encoder.layer.0.output.LayerNorm.weight"])] == 0.0
    assert wd_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == 0.01


def test_warmup_then_linear_decay():
    f = lr_lambda(PhaseConfig(warmup_ratio=0.1, decay="linear"), total_steps=100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == 0.0
    assert lr_lambda(PhaseConfig(), 100)(50) == 1.0


def test_cosent_loss():
    labels = torch.tensor([1.0, 3.0, 5.0])
    right = cosent_loss(torch.tensor([1.0, 3.0, 5.0]), labels)
    wrong = cosent_loss(torch.tensor([5.0, 3.0, 1.0]), labels)
    assert right < 0.1 < wrong
    # by hand: pairs (i, j) with y_i > y_j, terms exp(20 (s_j - s_i) / 5)
    s = torch.tensor([5.0, 3.0, 1.0]) / 5
    terms = [20 * (s[j] - s[i]) for i in range(3) for j in range(3) if labels[i] > labels[j]]
    assert wrong.item() == pytest.approx(torch.logsumexp(torch.stack([torch.tensor(0.0), *terms]), 0).item(), rel=1e-5)
