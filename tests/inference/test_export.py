"""`minbert export`: a Hugging Face BERT directory that transformers (and, mean-pooled,
sentence-transformers) load with our numbers, ONNX graphs that onnxruntime runs with our
decisions, and `Predictor.load(DIR)` from either export alone."""

import json
import shutil

import pytest
import torch

from minbert import Predictor
from minbert.cli import main as cli_main
from minbert.tasks.data import Example
from minbert.inference.export import export_checkpoint
from minbert.inference.manifest import MANIFEST
from minbert.inference.predictor import split_inputs
from minbert.tasks.encoding import EncodedTask
from minbert.tasks import BUILTIN, TaskSet

TEXTS = ["A man plays a guitar.", "dull", "", "the movie was a triumph, " * 30]


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return tiny_runs


@pytest.fixture(scope="module")
def hf_exports(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    for name, run in runs.items():
        assert cli_main(["export", "--checkpoint", str(run), "--out", str(out / name), "--format", "hf"]) == 0
    return {name: out / name for name in runs}


def encode(predictor, texts):
    data = EncodedTask(BUILTIN["sst"], [Example(str(i), (t,), None) for i, t in enumerate(texts)], predictor.tokenizer,
                       "siamese", predictor.model_cfg.max_length)  # fmt: skip
    return data.batch(list(range(len(texts))))


def test_transformers_loads_the_encoder_with_our_hidden_states(runs, hf_exports):
    from transformers import BertModel as HFBertModel

    for name, out in hf_exports.items():
        assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                "minbert_heads.safetensors", MANIFEST} <= {p.name for p in out.iterdir()}  # fmt: skip
        ours = Predictor.load(runs[name]).backend.model.bert
        hf = HFBertModel.from_pretrained(out).eval()
        batch = encode(Predictor.load(runs[name]), TEXTS)
        with torch.inference_mode():
            hidden, pooled = ours(batch.input_ids, batch.attention_mask)
            theirs = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        real = batch.attention_mask.bool()  # padding positions are nobody's output
        torch.testing.assert_close(theirs.last_hidden_state[real], hidden[real], atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs.pooler_output, pooled, atol=1e-5, rtol=0)


def test_predictor_from_the_export_alone(runs, hf_exports, small_data_dir, tmp_path):
    for name, out in hf_exports.items():
        moved = shutil.copytree(out, tmp_path / name)  # nothing of the run, nor of its base checkpoint, needed
        manifest = json.loads((moved / MANIFEST).read_text())
        assert manifest["paraphrase_threshold"] == 0.5 and manifest["dev"]["overall"] > 0
        manifest["config"]["model"]["checkpoint"] = str(tmp_path / "no-such-checkpoint")
        (moved / MANIFEST).write_text(json.dumps(manifest))
        exported, original = Predictor.load(moved), Predictor.load(runs[name])
        for task, inputs in split_inputs(small_data_dir, TaskSet.seed(), "dev").items():
            assert exported.predict(task, inputs).results == original.predict(task, inputs).results, (name, task)


def test_sentence_transformers_gives_our_mean_pooled_vectors(runs, hf_exports):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    out = hf_exports["cross"]  # the mean-pooled model
    assert (out / "modules.json").exists() and (out / "1_Pooling" / "config.json").exists()
    assert not (hf_exports["siamese"] / "modules.json").exists()  # [CLS] + pooler: not a sentence-transformers model
    predictor = Predictor.load(runs["cross"])
    with torch.inference_mode():
        ours = predictor.backend.model.embed(encode(predictor, TEXTS))  # the longest text is truncated on both sides
    theirs = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_onnx_graphs_agree_with_pytorch(runs, small_data_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    for name, run in runs.items():
        out = tmp_path / name
        report = export_checkpoint(run, out, "onnx")  # checked on the dev files before it is put in place
        assert report["agree"] and report["examples"] == {"sst": 48, "para": 48, "sts": 48}, report
        assert {"sst.onnx", "para.onnx", "sts.onnx", MANIFEST, "vocab.txt"} <= {p.name for p in out.iterdir()}
        assert report["int8"]["examples"] == report["examples"]  # the int8 graphs, compared (not required to agree)
        onnx, torch_ = Predictor.load(out, backend="onnx", batch_size=5), Predictor.load(run)
        for task, inputs in split_inputs(small_data_dir, TaskSet.seed(), "dev").items():  # batches of 5: many batch sizes and lengths
            a, b = onnx.predict(task, inputs).results, torch_.predict(task, inputs).results
            if task == "sst":
                assert [r.label for r in a] == [r.label for r in b]
                torch.testing.assert_close(torch.tensor([r.probabilities for r in a]),
                                           torch.tensor([r.probabilities for r in b]), atol=1e-5, rtol=0)
            elif task == "para":
                assert [r.positive for r in a] == [r.positive for r in b]
            else:
                assert a == pytest.approx(b, abs=1e-4)
        assert onnx.sentiment(["", "word " * 300]) and onnx.similarity([("", "x")])  # empty and over-long


def test_cli_predict_with_the_onnx_backend(runs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert cli_main(["export", "--checkpoint", str(runs["siamese"]), "--out", str(out), "--format", "onnx",
                     "--check-limit", "8"]) == 0  # fmt: skip
    assert '"agree": true' in capsys.readouterr().out
    assert cli_main(["predict", "--checkpoint", str(out), "--backend", "onnx", "--task", "sts", "a dog", "a cat"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("a dog | a cat")
    assert cli_main(["predict", "--checkpoint", str(runs["siamese"]), "--backend", "onnx", "--task", "sst", "x"]) == 2
    assert "minbert export" in capsys.readouterr().err


def test_export_never_overwrites_a_foreign_directory(runs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    assert cli_main(["export", "--checkpoint", str(runs["cross"]), "--out", str(out)]) == 2
    assert "not a minbert export" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_int8_graphs_hold_int8_weights(runs, small_data_dir, tmp_path):
    """The export's {task}.int8.onnx: every weighted matrix product (attention projections and
    output, feed-forward, heads) an int8 one, with int8 weights; Predictor.load(DIR,
    backend="int8") runs them, close to the fp32 model."""
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "cross"
    export_checkpoint(runs["cross"], out, "onnx", check_limit=8)
    layers = json.loads((out / MANIFEST).read_text())["bert_config"]["num_hidden_layers"]
    for task in ("sst", "para", "sts"):
        fp32, int8 = (onnx.load(str(out / name)).graph for name in (f"{task}.onnx", f"{task}.int8.onnx"))
        weights = {t.name for t in fp32.initializer}
        weighted = [n for n in fp32.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
        ops = [node.op_type for node in int8.node]
        assert len(weighted) >= 6 * layers and ops.count("MatMulInteger") == len(weighted), ops
        assert sum(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 for t in int8.initializer) == len(weighted)
    int8, fp32 = Predictor.load(out, backend="int8"), Predictor.load(runs["cross"])
    assert int8.backend.precision == "int8"
    inputs = split_inputs(small_data_dir, TaskSet.seed(), "dev")["sts"]
    a, b = int8.predict("sts", inputs).results, fp32.predict("sts", inputs).results
    assert max(abs(x - y) for x, y in zip(a, b)) <= 0.05 * 5  # a few percent of the 0-5 scale


def test_int8_backend_from_exports_without_int8_graphs(runs, small_data_dir, tmp_path):
    """An ONNX export without its int8 graphs (say, written before they were) gets them made from
    its fp32 graphs; a Hugging Face export, from its PyTorch weights: the same int8 outputs."""
    pytest.importorskip("onnxruntime")
    onnx_dir, hf_dir = tmp_path / "onnx", tmp_path / "hf"
    export_checkpoint(runs["cross"], onnx_dir, "onnx", check=False)
    export_checkpoint(runs["cross"], hf_dir, "hf")
    inputs = split_inputs(small_data_dir, TaskSet.seed(), "dev")["sst"]
    written = Predictor.load(onnx_dir, backend="int8").predict("sst", inputs).results
    for path in onnx_dir.glob("*.int8.onnx"):
        path.unlink()
    for directory in (onnx_dir, hf_dir):
        made = Predictor.load(directory, backend="int8")
        assert made.backend.precision == "int8" and not list(directory.glob("*.int8.onnx"))  # nothing written there
        assert made.predict("sst", inputs).results == written, directory.name
