"""train.precision "auto": bf16 autocast where the CPU has native bf16 (AMX, AVX512-BF16), fp32
elsewhere; what stays fp32 under CPU autocast; the resolved precision recorded and kept on resume.

The suite sets MINBERT_AUTO_PRECISION=fp32 (tests/conftest.py) so that its exact comparisons are
of fp32 arithmetic on every CPU; the tests here that ask for "auto" itself remove it, and the ones
that train in bf16 skip, saying why, on a CPU without native bf16 (CI's CPU varies)."""

import json

import pytest
import torch
import yaml

from minbert import distributed
from minbert.config import load_config
from minbert.inference.backends import TorchBackend
from minbert.run_files import load_checkpoint
from minbert.runs import build_model, encode_all, read_all
from minbert.training import TrainOptions, train
from minbert.training.loop import make_optimizer, step_loss
from minbert.training.state import Run

CPU = torch.device("cpu")
NATIVE = distributed.native_bf16(CPU)
needs_bf16 = pytest.mark.skipif(NATIVE is None, reason="this CPU has no native bf16 (neither AMX nor AVX512-BF16): "
                                "bf16 would be emulated there, and auto trains in fp32")  # fmt: skip


@pytest.fixture
def native_auto(monkeypatch):
    """"auto" as a user gets it: decided by the CPU, not by the suite's MINBERT_AUTO_PRECISION."""
    monkeypatch.delenv(distributed.AUTO_PRECISION_ENV, raising=False)


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def test_auto_is_bf16_where_the_cpu_has_native_bf16_and_fp32_elsewhere(native_auto, monkeypatch):
    monkeypatch.setattr(distributed, "native_bf16", lambda device: "the CPU has AMX")
    assert distributed.resolve_precision(CPU, "auto") == ("bf16", "the CPU has AMX")
    monkeypatch.setattr(distributed, "native_bf16", lambda device: None)
    assert distributed.resolve_precision(CPU, "auto") == ("fp32", "no native bf16 on this CPU")
    assert isinstance(distributed.autocast(CPU, "auto"), type(distributed.autocast(CPU, "fp32")))  # no autocast
    for asked in ("fp32", "bf16"):  # what is asked by name is kept, native or not
        assert distributed.resolve_precision(CPU, asked) == (asked, "as configured")
    monkeypatch.setenv(distributed.AUTO_PRECISION_ENV, "bf16")
    assert distributed.resolve_precision(CPU, "auto") == ("bf16", "MINBERT_AUTO_PRECISION=bf16")
    monkeypatch.setenv(distributed.AUTO_PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="MINBERT_AUTO_PRECISION='fp16': expected fp32 or bf16"):
        distributed.resolve_precision(CPU, "auto")
    with pytest.raises(ValueError, match="not one of"):
        distributed.resolve_precision(CPU, "half")


def test_native_bf16_follows_the_cpu_flags():
    flags = cpu_flags()
    found = distributed.native_bf16(CPU)
    assert (found is not None) == bool({"amx_bf16", "avx512_bf16"} & flags), (found, flags & {"amx_bf16", "avx512_bf16"})
    if found is not None:
        assert found in ("the CPU has AMX", "the CPU has AVX512-BF16")


def tiny_cfg(tiny_checkpoint, small_data_dir, tmp_path, *extra):
    return load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={tmp_path / 'cache'}",
        "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1", "train.predict_test=false",
        "model.pair_encoding=cross", "model.pooling=mean", "train.rdrop=0.5", "train.sts_loss=mse+cosent",
        "train.phases=[{name: rr, epochs: 2, lr: 2e-3}]", *extra])  # fmt: skip


def test_a_bf16_step_runs_its_matmuls_in_bf16_and_keeps_the_rest_fp32(tiny_checkpoint, small_data_dir, tmp_path):
    """Under CPU autocast: linear layers compute in bf16; the residual stream, every LayerNorm's
    input and output, the losses (R-Drop's and CoSENT's terms included), the weights, their
    gradients and AdamW's moments are fp32."""
    cfg = tiny_cfg(tiny_checkpoint, small_data_dir, tmp_path)
    model, tokenizer = build_model(cfg)
    train_data = encode_all(read_all(cfg, {"train": ["sst", "sts"]}), tokenizer, cfg)["train"]
    run = Run.bare(cfg, model, train_data)
    seen: dict[str, set] = {"linear": set(), "norm_in": set(), "norm_out": set()}

    def record(kind_in, kind_out):
        def hook(module, inputs, output):
            if kind_in:
                seen[kind_in].add(inputs[0].dtype)
            seen[kind_out].add(output.dtype)
        return hook

    for module in model.bert.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(record(None, "linear"))
        elif isinstance(module, torch.nn.LayerNorm):
            module.register_forward_hook(record("norm_in", "norm_out"))
    optimizer = make_optimizer(model, cfg.train.phases[0], fused=True)
    for task in ("sst", "sts"):  # a classification with R-Drop; a regression with MSE + CoSENT and R-Drop
        with distributed.autocast(CPU, "bf16"):
            loss = step_loss(run, task, list(range(8)), cfg.train.phases[0])
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
    optimizer.step()
    assert seen == {"linear": {torch.bfloat16}, "norm_in": {torch.float32}, "norm_out": {torch.float32}}
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        if p.grad is not None:
            assert p.grad.dtype == torch.float32, name
    moments = [t for state in optimizer.state.values() for k, t in state.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(t.dtype == torch.float32 for t in moments)


def test_the_cpu_softmax_of_bf16_scores_is_the_fp32_softmax_rounded_once():
    """The written-out attention's softmax gets bf16 scores: torch's CPU kernel computes the max,
    the exponentials and their sum in fp32 and rounds only the probabilities to bf16, as flash
    attention does. Backward likewise."""
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(4, 12, 33, 33, generator=g) * 4).bfloat16().requires_grad_()
    mine = scores.softmax(-1)
    fp32 = scores.float().softmax(-1)
    assert torch.equal(mine, fp32.bfloat16())
    upstream = torch.randn(mine.shape, generator=g).bfloat16()
    (grad_mine,) = torch.autograd.grad(mine, scores, upstream)
    (grad_fp32,) = torch.autograd.grad(fp32, scores, upstream.float())
    grad_fp32 = grad_fp32.float()  # (rounded to bf16 once, at the cast back to the scores' dtype)
    torch.testing.assert_close(grad_mine.float(), grad_fp32, rtol=2**-7, atol=2**-8 * grad_fp32.abs().max().item())


def test_auto_falls_back_to_fp32_on_a_cpu_without_bf16_and_says_so(tiny_checkpoint, small_data_dir, tmp_path,
                                                                  native_auto, monkeypatch, capsys):  # fmt: skip
    monkeypatch.setattr(distributed, "native_bf16", lambda device: None)
    train(tiny_cfg(tiny_checkpoint, small_data_dir, tmp_path, "train.phases=[{epochs: 1, lr: 1e-3}]"), tmp_path / "run",
          TrainOptions(progress=False))  # fmt: skip
    assert "precision: fp32 (no native bf16 on this CPU)" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["precision"] == "fp32"
    assert json.loads((tmp_path / "run" / "timing.json").read_text())["precision"] == "fp32"
    assert TorchBackend(_model(tmp_path), CPU, "auto").precision == "fp32"


def _model(tmp_path):
    from minbert.runs import load_trained

    return load_trained(tmp_path / "run")[0]


@needs_bf16
def test_auto_trains_in_bf16_records_it_and_a_resume_keeps_it(tiny_checkpoint, small_data_dir, tmp_path, native_auto,
                                                             monkeypatch, capsys):  # fmt: skip
    """A run started with "auto" on a bf16 CPU records bf16 (config.yaml, checkpoints, timing.json);
    resumed where "auto" would now mean fp32, it keeps bf16, and gives the uninterrupted run's results."""
    cfg = tiny_cfg(tiny_checkpoint, small_data_dir, tmp_path)
    full = train(cfg, tmp_path / "full", TrainOptions(progress=False))
    assert f"precision: bf16 ({NATIVE})" in capsys.readouterr().out
    assert train(cfg, tmp_path / "cut", TrainOptions(progress=False, stop_after_epochs=1)) == {}
    assert load_checkpoint(tmp_path / "cut" / "last.safetensors").config["train"]["precision"] == "bf16"
    monkeypatch.setenv(distributed.AUTO_PRECISION_ENV, "fp32")  # "auto" now means fp32 for a new run
    resumed = train(cfg, tmp_path / "cut", TrainOptions(progress=False, resume=True))
    assert "precision: bf16 (as the run started)" in capsys.readouterr().out
    assert {k: v for k, v in resumed.items() if k != "train_wall_s"} == {k: v for k, v in full.items() if k != "train_wall_s"}
    a = load_checkpoint(tmp_path / "full" / "last.safetensors").model
    b = load_checkpoint(tmp_path / "cut" / "last.safetensors").model
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    for run in ("full", "cut"):
        assert json.loads((tmp_path / run / "timing.json").read_text())["precision"] == "bf16"
        assert yaml.safe_load((tmp_path / run / "config.yaml").read_text())["train"]["precision"] == "bf16"


@needs_bf16
def test_prediction_in_bf16_stays_close_to_fp32(tiny_runs, native_auto):
    """The Predictor's torch backend at "auto" predicts in bf16 here, within bf16's rounding of fp32."""
    from minbert.inference.predictor import Predictor

    auto, fp32 = Predictor.load(tiny_runs["cross"]), Predictor.load(tiny_runs["cross"], precision="fp32")
    assert (auto.backend.precision, fp32.backend.precision) == ("bf16", "fp32")
    pairs = [("a man is playing a guitar", "a man plays the guitar"), ("the cat sleeps", "stocks fell sharply")]
    a, b = auto.similarity(pairs), fp32.similarity(pairs)
    assert all(abs(x - y) < 0.05 for x, y in zip(a, b)), (a, b)  # scores on 0-5
    texts = ["a triumph", "dull and slow"]
    for x, y in zip(auto.sentiment(texts), fp32.sentiment(texts)):
        assert max(abs(p - q) for p, q in zip(x.probabilities, y.probabilities)) < 0.02
