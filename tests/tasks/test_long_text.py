"""Long texts (`model.long_text: chunks`): windows of a text, the mean over them in prediction,
windows as training examples, the same answer from the Predictor, the ONNX backend and the
server, and the config's checks."""

import pytest
import torch
from conftest import request, serving

from minbert import Predictor
from minbert.config import ConfigError, load_config, window_stride
from minbert.evaluation import model_outputs
from minbert.inference.export import export_checkpoint
from minbert.inference.serve import create_app
from minbert.tasks import BUILTIN
from minbert.tasks.data import Example
from minbert.tasks.encoding import EncodedTask
from minbert.tokenizer import WordPieceTokenizer

LONG = "the movie was a triumph of style over substance and I loved every minute of it " * 6
SHORT = ["a fine film", "dull", ""]
CHUNKS = ["model.long_text=chunks", "model.stride=8"]


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return WordPieceTokenizer(embedded_dir / "vocab.txt")


def encoded(texts, tokenizer, max_length=40, stride=None, labels=None):
    labels = labels or [None] * len(texts)
    examples = [Example(str(i), (t,), y) for i, (t, y) in enumerate(zip(texts, labels))]
    return EncodedTask(BUILTIN["sst"], examples, tokenizer, "siamese", max_length, stride)


@pytest.mark.parametrize("max_length, stride", [(40, 8), (16, 0), (12, 9)])
def test_windows_cover_the_text_with_stride_tokens_of_overlap(tokenizer, max_length, stride):
    tokens = tokenizer.encode([LONG], 512)[0][1:-1]
    windows = tokenizer.encode_windows([LONG], max_length, stride)[0]
    body, step = max_length - 2, max_length - 2 - stride
    assert len(windows) == 1 + -(-(len(tokens) - body) // step)  # ceil: the last window reaches the end
    assert windows[0] == tokenizer.encode([LONG], max_length)[0]  # the first window is the truncation
    for w in windows:
        assert len(w) <= max_length and w[0] == tokenizer.cls_id and w[-1] == tokenizer.sep_id
    slices = [w[1:-1] for w in windows]
    for a, b in zip(slices, slices[1:]):
        assert a[len(a) - stride :] == b[:stride] if stride else True
    rebuilt = slices[0] + [t for s in slices[1:] for t in s[stride:]]
    assert rebuilt == tokens  # every token, in order, once beyond the overlaps


def test_short_texts_are_one_window_each_and_predict_bit_identically(tokenizer, tiny_runs):
    model = Predictor.load(tiny_runs["cross"]).backend.model
    plain, chunked = encoded(SHORT, tokenizer), encoded(SHORT, tokenizer, stride=8)
    assert chunked.owner == [0, 1, 2] and chunked.sides == plain.sides
    assert torch.equal(model_outputs(model, "sst", chunked), model_outputs(model, "sst", plain))


def test_a_long_text_predicts_the_mean_of_its_windows(tokenizer, tiny_runs):
    model = Predictor.load(tiny_runs["cross"]).backend.model
    data = encoded(["dull", LONG], tokenizer, stride=8)
    n = len(data.owner) - 1
    assert n > 2 and data.owner == [0] + [1] * n
    with torch.inference_mode():  # each window alone through the model, then their mean
        by_hand = torch.cat([model.eval().predict_batch("sst", data, [r], "cpu") for r in range(1, n + 1)]).mean(0)
    outputs = model_outputs(model, "sst", data)
    assert outputs.shape == (2, 5)
    torch.testing.assert_close(outputs[1], by_hand, atol=1e-5, rtol=0)  # fp32 sums of a few logits of size ~1
    torch.testing.assert_close(outputs[0], model_outputs(model, "sst", encoded(["dull"], tokenizer))[0], atol=1e-6, rtol=0)


def test_training_windows_carry_their_texts_label(tokenizer):
    data = encoded(["dull", LONG], tokenizer, stride=8, labels=[3, 1])
    batch = data.batch(list(range(len(data))))
    assert len(data) == len(data.owner) > 2 and batch.labels.tolist() == [3] + [1] * (len(data) - 1)
    assert data.examples_of([0, 2]) == [0, 1] and len(data.ids) == 2


def test_the_config_says_which_splits_take_windows():
    cfg = load_config(None, CHUNKS)
    assert [window_stride(cfg.model, s) for s in ("train", "dev", "predict")] == [8, 8, 8]
    first = load_config(None, [*CHUNKS, "model.long_text_train=first"])
    assert [window_stride(first.model, s) for s in ("train", "dev")] == [None, 8]
    assert window_stride(load_config(None, []).model, "dev") is None  # the default: truncate


@pytest.mark.parametrize("override, message", [
    ("model.long_text=windows", r"^model.long_text: 'windows' is not one of \('truncate', 'chunks'\)"),
    ("model.long_text_train=all", r"^model.long_text_train: 'all' is not one of"),
    ("model.stride=-1", r"^model.stride: -1 is out of range"),
])  # fmt: skip
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_stride_must_leave_room_in_a_window():
    with pytest.raises(ConfigError, match=r"^model.stride: 126 must be below model.max_length - 2 \(126"):
        load_config(None, ["model.long_text=chunks", "model.stride=126"])
    load_config(None, ["model.stride=126"])  # truncation never reads it


def test_predictor_onnx_and_server_agree_on_a_long_text(tiny_runs, tmp_path):
    run = tiny_runs["cross"]
    torch_ = Predictor.load(run, overrides=CHUNKS)
    plain = Predictor.load(run)
    ours = torch_.predict("sst", [LONG, "dull"])
    assert ours.truncated == [False, False] and plain.predict("sst", [LONG]).truncated == [True]
    assert ours.results[0].probabilities != plain.sentiment([LONG])[0].probabilities  # the windows count
    with serving(create_app(torch_)) as url:
        status, answer = request(url, "/v1/sentiment", {"texts": [LONG]})
    assert status == 200
    assert answer["results"][0]["probabilities"] == pytest.approx(ours.results[0].probabilities, abs=1e-6)
    pytest.importorskip("onnxruntime")
    export_checkpoint(run, tmp_path / "onnx", "onnx", list(CHUNKS))  # the manifest keeps long_text and stride
    onnx = Predictor.load(tmp_path / "onnx", backend="onnx")
    assert (onnx.model_cfg.long_text, onnx.model_cfg.stride) == ("chunks", 8)
    torch.testing.assert_close(torch.tensor(onnx.sentiment([LONG])[0].probabilities),
                               torch.tensor(ours.results[0].probabilities), atol=1e-5, rtol=0)  # fmt: skip
