"""Heads and losses on hand-made inputs."""

import pytest
import torch
import torch.nn.functional as F

from minbert.tasks.heads import CosineSimilarityHead, CrossPairHead, LinearClassifier, SentimentMLP, SiamesePairHead
from minbert.tasks import BUILTIN


def test_sentiment_mlp_layout_and_shape():
    head = SentimentMLP(8, 5, dropout=0.1)
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Dropout", "Linear"]
    assert head(torch.randn(4, 8)).shape == (4, 5)
    assert LinearClassifier(8, 5, 0.1)(torch.randn(4, 8)).shape == (4, 5)


def test_siamese_features_are_absdiff_and_product():
    head = SiamesePairHead(2, dropout=0.0).eval()
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0]]))
        head.linear.bias.zero_()
    u, v = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    # |u - v| = [2, 3], u * v = [3, -2] -> 2 + 30 + 300 - 2000
    assert head(u, v).item() == pytest.approx(-1668.0)
    assert head(u, v).item() == pytest.approx(head(v, u).item())  # symmetric in its inputs


def test_similarity_scores_lie_in_0_5():
    head = SiamesePairHead(4, dropout=0.0, scale=5.0)
    scores = head(torch.randn(64, 4) * 10, torch.randn(64, 4) * 10)
    assert scores.shape == (64,) and scores.min() >= 0 and scores.max() <= 5
    cross = CrossPairHead(4, 0.0, scale=5.0)(torch.randn(7, 4))
    assert cross.shape == (7,) and cross.min() >= 0 and cross.max() <= 5


def test_cosine_head_maps_onto_0_5():
    head = CosineSimilarityHead()
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    torch.testing.assert_close(head(u, v), torch.tensor([5.0, 2.5, 0.0]))
    assert not list(head.parameters())


def test_losses_match_torch():
    logits, y = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0]]), torch.tensor([0])
    assert BUILTIN["sst"].loss(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())
    logit, t = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    expected = -(torch.log(torch.sigmoid(torch.tensor(0.0))) + torch.log(1 - torch.sigmoid(torch.tensor(2.0)))) / 2
    assert BUILTIN["para"].loss(logit, t).item() == pytest.approx(expected.item(), rel=1e-6)
    assert BUILTIN["sts"].loss(torch.tensor([1.0, 4.0]), torch.tensor([2.0, 4.0])).item() == pytest.approx(0.5)


def test_predictions():
    assert BUILTIN["sst"].predict(torch.tensor([[0.1, 3.0, 0, 0, 0]])).tolist() == [1]
    assert BUILTIN["para"].predict(torch.tensor([-0.5, 0.5])).tolist() == [0, 1]
    assert BUILTIN["sts"].format_prediction(3.14159) == "3.1416"
