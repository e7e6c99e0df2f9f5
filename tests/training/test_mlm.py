import torch

from minbert.training.mlm import IGNORE, MaskedLMHead, mask_tokens
from minbert.model import BertConfig, BertModel


def test_masking_follows_80_10_10():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (400, 250), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    corrupted, labels = mask_tokens(ids, maskable, mask_id=103, vocab_size=30522, generator=g)
    chosen = labels != IGNORE
    n = chosen.sum().item()
    assert abs(n / maskable.sum().item() - 0.15) < 0.005
    assert not chosen[:, 0].any()  # never a special position
    assert torch.equal(labels[chosen], ids[chosen])  # the target is the original token
    masked = (corrupted == 103) & chosen
    kept = (corrupted == ids) & chosen
    randomised = chosen & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(kept.sum().item() / n - 0.1) < 0.01  # (a random token equal to the original counts here)
    assert abs(randomised.sum().item() / n - 0.1) < 0.01
    assert torch.equal(corrupted[~chosen], ids[~chosen])  # nothing else changes


def test_head_ties_word_embeddings():
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    head = MaskedLMHead(bert.config, bert.embeddings.word_embeddings)
    assert head(torch.randn(3, 8)).shape == (3, 50)
    names = {n for n, _ in head.named_parameters()}
    assert names == {"bias", "transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight", "transform.LayerNorm.bias"}


def test_mlm_loss_picks_the_chosen_positions_without_a_sync():
    """The positions to predict are read on the host, where they were drawn: the loss equals the
    boolean-indexed form, and computing it reads nothing back (no aten._local_scalar_dense)."""
    import torch.nn.functional as F

    from minbert.training.mlm import mlm_loss
    from minbert.training.op_count import OpCount

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    bert.eval()  # no dropout: the two forwards below are the same arithmetic
    head = MaskedLMHead(bert.config, bert.embeddings.word_embeddings)
    ids = torch.randint(5, 50, (4, 7))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    corrupted, labels = mask_tokens(ids, maskable, mask_id=3, vocab_size=50, prob=0.3)
    assert (labels != IGNORE).any()
    with OpCount() as count:
        loss = mlm_loss(bert, head, corrupted, None, labels)
        loss.backward()
    assert count.syncs == 0, dict(count.sites)
    hidden, _ = bert(corrupted)
    chosen = labels != IGNORE
    assert torch.equal(loss, F.cross_entropy(head(hidden[chosen]), labels[chosen]))
    nothing = torch.full_like(labels, IGNORE)
    assert mlm_loss(bert, head, corrupted, None, nothing).item() == 0.0
