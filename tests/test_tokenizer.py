"""Our tokenizer against transformers.BertTokenizer on the same vocab."""

import pytest

from minbert.tasks import BUILTIN
from minbert.tokenizer import WordPieceTokenizer


@pytest.fixture(scope="module")
def tokenizers(embedded_dir):
    from transformers import BertTokenizer

    return WordPieceTokenizer(embedded_dir / "vocab.txt"), BertTokenizer(str(embedded_dir / "vocab.txt"), do_lower_case=True)


ODD = ["Café déjà vu -LRB- 1999 -RRB- isn't 'bad' ...", "  spaced   out\ttabs ", "中文 and emoji 😀", "UPPER lower MiXeD"]


def test_single_sentences_match(tokenizers, data_dir):
    ours, theirs = tokenizers
    sentences = [e.texts[0] for e in BUILTIN["sst"].read(data_dir, "dev").examples[:200]] + ODD
    assert ours.encode(sentences, 128) == [theirs(s, truncation=True, max_length=128)["input_ids"] for s in sentences]


def test_pairs_match_with_token_types(tokenizers, data_dir):
    ours, theirs = tokenizers
    pairs = [e.texts for e in BUILTIN["para"].read(data_dir, "dev").examples[:200]]
    got = ours.encode_pairs([a for a, _ in pairs], [b for _, b in pairs], 128)
    for (a, b), (ids, types) in zip(pairs, got):
        ref = theirs(a, b, truncation=True, max_length=128)
        assert ids == ref["input_ids"]
        assert types == ref["token_type_ids"]


def test_truncation_matches(tokenizers):
    ours, theirs = tokenizers
    long_a, long_b = "word " * 100, "other text " * 20
    assert ours.encode([long_a], 16) == [theirs(long_a, truncation=True, max_length=16)["input_ids"]]
    (ids, types), = ours.encode_pairs([long_a], [long_b], 24)
    ref = theirs(long_a, long_b, truncation="longest_first", max_length=24)
    assert len(ids) == 24
    assert (ids, types) == (ref["input_ids"], ref["token_type_ids"])
