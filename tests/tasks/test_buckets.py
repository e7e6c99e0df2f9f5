"""Length buckets (train.length_buckets): batches padded up to a few lengths, the same results as
unbucketed batches within fp32 rounding, and the config's checks."""

import pytest
import torch

from minbert.config import ConfigError, ModelConfig, load_config
from minbert.model import BertConfig, BertModel
from minbert.multitask import MultitaskBert
from minbert.tasks import BUILTIN
from minbert.tasks.data import Example, bucket_length, has_padding, pad_batch
from minbert.tasks.encoding import EncodedTask
from minbert.tokenizer import WordPieceTokenizer

WORDS = "the film was a fine and quietly moving story of two old friends who meet again".split()
BUCKETS = [8, 16]


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return WordPieceTokenizer(embedded_dir / "vocab.txt")


def sentences(n: int) -> list[str]:
    return [" ".join(WORDS[: 1 + (5 * i) % len(WORDS)]) for i in range(n)]  # 1..16 words, varied


def examples(task: str, n: int = 12) -> list[Example]:
    texts = sentences(n)
    if task == "sst":
        return [Example(str(i), (t,), i % 5) for i, t in enumerate(texts)]
    return [Example(str(i), (t, " ".join(WORDS[: 1 + i % 3])), float(i % 2)) for i, t in enumerate(texts)]


def encoded(tokenizer, task: str, pair_encoding: str = "siamese", buckets=None, max_length: int = 24) -> EncodedTask:
    return EncodedTask(BUILTIN[task], examples(task), tokenizer, pair_encoding, max_length, None, buckets)


def test_bucket_length_is_the_smallest_bucket_that_holds_the_longest():
    assert [bucket_length(n, [32, 64, 96, 128]) for n in (1, 32, 33, 64, 65, 128)] == [32, 32, 64, 64, 96, 128]
    assert bucket_length(130, [32, 64]) == 130  # above the last: its own length
    assert bucket_length(17, None) == 17


def test_pad_batch_to_a_length():
    ids, mask = pad_batch([[101, 5, 102], [101, 102]], pad_id=0, length=5)
    assert ids.tolist() == [[101, 5, 102, 0, 0], [101, 102, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert has_padding([[1, 2], [3, 4]], 3) and not has_padding([[1, 2], [3, 4]], 2)
    with pytest.raises(ValueError, match="does not fit in length 2"):
        pad_batch([[1, 2, 3]], length=2)


@pytest.mark.parametrize("task,pair_encoding", [("sst", "siamese"), ("para", "siamese"), ("para", "cross")])
def test_batches_come_in_bucket_lengths_only(tokenizer, task, pair_encoding):
    data = encoded(tokenizer, task, pair_encoding, BUCKETS)
    plain = encoded(tokenizer, task, pair_encoding)
    assert data.buckets == (8, 16, 24)  # max_length closes the list
    seen = set()
    for indices in ([0], [1, 2], [3, 4, 5], list(range(12)), [7, 9]):
        batch, ref = data.batch(indices), plain.batch(indices)
        T, longest = batch.input_ids.shape[1], ref.input_ids.shape[1]
        assert T == bucket_length(longest, data.buckets) and T in data.buckets
        seen.add(T)
        # the same tokens, then masked padding
        assert torch.equal(batch.input_ids[:, :longest], ref.input_ids)
        assert torch.equal(batch.attention_mask[:, :longest], ref.attention_mask)
        assert batch.input_ids[:, longest:].eq(tokenizer.pad_id).all() and batch.attention_mask[:, longest:].eq(0).all()
        if ref.token_type_ids is not None:
            assert batch.token_type_ids.shape == batch.input_ids.shape
            assert torch.equal(batch.token_type_ids[:, :longest], ref.token_type_ids)
        assert batch.padded == (T > min(int(n) for n in batch.attention_mask.sum(1)))
        side = data.side_batch(0, indices)
        assert side.input_ids.shape[1] in data.buckets
    assert len(seen) >= 2  # the cases above reach more than one bucket


def test_a_full_row_at_a_bucket_is_not_padded(tokenizer):
    data = encoded(tokenizer, "sst", buckets=[len(tokenizer.encode([sentences(12)[0]], 24)[0])])
    batch = data.batch([0])  # one row, exactly the first bucket's length
    assert batch.input_ids.shape[1] == data.buckets[0] and not batch.padded and batch.encoder_mask is None


def small_model(**model_cfg) -> MultitaskBert:
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))
    return MultitaskBert(bert, ModelConfig(**model_cfg)).eval()


@pytest.mark.parametrize("task,model_cfg", [
    ("sst", {"pooling": "cls"}), ("sst", {"pooling": "mean"}),
    ("sts", {"pair_encoding": "siamese", "pooling": "mean"}), ("para", {"pair_encoding": "cross", "pooling": "cls"}),
])  # fmt: skip
def test_bucketed_batches_give_the_same_head_outputs(tokenizer, task, model_cfg):
    model = small_model(**model_cfg)
    encoding = model_cfg.get("pair_encoding", "siamese")
    data, plain = encoded(tokenizer, task, encoding, BUCKETS), encoded(tokenizer, task, encoding)
    indices = list(range(12))
    batch, ref = data.batch(indices), plain.batch(indices)
    assert batch.input_ids.shape[1] > ref.input_ids.shape[1]  # padded further than its longest row
    with torch.no_grad():
        got, want = model(task, batch), model(task, ref)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # one row alone, unpadded, and the same row padded to its bucket (only padding is masked)
    short = [i for i in indices if plain.batch([i]).input_ids.shape[1] not in data.buckets]
    assert len(short) >= 2
    for i in short[:2]:
        one = data.batch([i])
        assert one.padded
        with torch.no_grad():
            torch.testing.assert_close(model(task, one), model(task, plain.batch([i])), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[i : i + 1], model(task, plain.batch([i])), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides,message", [
    (["train.length_buckets=[64,32]"], r"train.length_buckets.1: 32 is not above the bucket before it \(64\)"),
    (["train.length_buckets=[32,32]"], r"train.length_buckets.1: 32 is not above"),
    (["train.length_buckets=[32,256]"], r"train.length_buckets.1: 256 is more than model.max_length \(128\)"),
    (["train.length_buckets=[0,32]"], r"train.length_buckets.0: 0 is out of range"),
    (["train.length_buckets=[]"], r"train.length_buckets: an empty list"),
    (["train.compile_mode=fast"], r"train.compile_mode: 'fast' is not one of"),
    (["train.compile_mode=max-autotune"], r"'max-autotune' needs train.compile=true"),
    (["train.compile=true", "train.compile_mode=reduce-overhead"], r"'reduce-overhead' .* needs train.length_buckets"),
    (["train.packing=true", "train.length_buckets=[64,128]"], r"train.packing: packed rows vary .* use one of the two"),
])  # fmt: skip
def test_config_checks(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_good_buckets_load():
    cfg = load_config(None, ["train.length_buckets=[32,64,96,128]", "train.compile=true"])
    assert cfg.train.length_buckets == [32, 64, 96, 128] and cfg.train.compile_mode == "default"
    assert load_config(None, ["model.max_length=64", "train.length_buckets=[16,64]"]).train.length_buckets == [16, 64]
