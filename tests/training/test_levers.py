"""Issue 15's training levers, one batch at a time on a tiny random BERT: R-Drop, swapped
pairs and symmetric prediction, distillation, per-task loss weights; and a run that uses them
all (with the phrases as their own task) end to end."""

import json

import pytest
import torch

from minbert.runs import build_model, encode_all, predict_checkpoint, read_all
from minbert.tasks.losses import disagreement, distill_loss
from minbert.training import TrainOptions, train
from minbert.training.loop import step_loss
from minbert.training.state import Run
from test_train import tiny_config


@pytest.fixture()
def setup(tiny_checkpoint, small_data_dir, tmp_path):
    def make(*extra):
        cfg = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "model.pair_encoding=cross", "model.pooling=mean",
                          "train.phases=[{tasks: [sst, para, sts], epochs: 1, lr: 1e-3}]", *extra)  # fmt: skip
        torch.manual_seed(0)
        model, tokenizer = build_model(cfg)
        data = encode_all(read_all(cfg, {"train": ("sst", "para", "sts")}), tokenizer, cfg)["train"]
        return cfg, model, data

    return make


def loss_of(cfg, model, data, task, indices=(0, 1, 2, 3), step=0):
    return step_loss(Run.bare(cfg, model, data, step=step), task, list(indices), cfg.train.phases[0])


def test_disagreement_is_zero_for_equal_outputs_and_positive_otherwise():
    a = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    for kind, x, y in [("classification", a, a.flip(1)), ("binary", a[:, 0], a[:, 1]), ("regression", a[:, 0], a[:, 1])]:
        assert disagreement(kind, x, x).item() == pytest.approx(0.0, abs=1e-7)
        assert disagreement(kind, x, y).item() > 0.01
        assert disagreement(kind, x, y).item() == pytest.approx(disagreement(kind, y, x).item(), rel=1e-6)  # symmetric


def test_distill_loss_with_one_hot_teachers_is_the_plain_loss():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    torch.testing.assert_close(distill_loss("classification", logits, torch.eye(5)[labels]),
                               torch.nn.functional.cross_entropy(logits, labels))  # fmt: skip
    z, y = torch.randn(6), torch.tensor([0.0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(distill_loss("binary", z, y), torch.nn.functional.binary_cross_entropy_with_logits(z, y))


def test_rdrop_adds_nothing_without_dropout_and_something_with_it(setup):
    plain_cfg, model, data = setup()
    rdrop_cfg, _, _ = setup("train.rdrop=1.0")
    model.eval()  # no dropout: both forwards agree, the loss is the plain one
    for task in ("sst", "sts"):
        torch.testing.assert_close(loss_of(rdrop_cfg, model, data, task), loss_of(plain_cfg, model, data, task),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    model.train()
    torch.manual_seed(1)
    with_dropout = loss_of(rdrop_cfg, model, data, "sst")
    torch.manual_seed(1)
    halves = model("sst", data["sst"].batch([0, 1, 2, 3] * 2)).float().chunk(2)
    assert disagreement("classification", *halves).item() > 0  # two dropout masks differ
    assert with_dropout.item() > 0


def test_swapped_pairs_are_the_pairs_encoded_the_other_way(setup):
    cfg, model, data = setup()
    para = data["para"]
    swapped = para.batch([0, 1], swap=[True, False])
    tokenizer = build_model(cfg)[1]
    a, b = para._swap_inputs[1][0]
    ids, types = tokenizer.encode_pairs([b], [a], cfg.model.max_length)[0]
    assert swapped.input_ids[0, : len(ids)].tolist() == ids
    assert swapped.token_type_ids[0, : len(types)].tolist() == types
    assert swapped.input_ids[1].tolist()[: para.lengths[1]] == para.sides[0][1]
    assert swapped.labels.tolist() == para.labels[[0, 1]].tolist()
    with pytest.raises(ValueError, match="only cross-encoded pairs"):
        data["sst"].batch([0], swap=[True])


def test_swap_pairs_changes_the_batch_and_is_seeded_by_step(setup):
    plain_cfg, model, data = setup()
    swap_cfg, _, _ = setup("train.swap_pairs=true")
    model.eval()
    same = [loss_of(swap_cfg, model, data, "sts", range(8), step=3) for _ in range(2)]
    assert same[0].item() == same[1].item()  # one coin per (step, example)
    assert loss_of(swap_cfg, model, data, "sts", range(8), step=3).item() != loss_of(plain_cfg, model, data, "sts", range(8)).item()
    # a single-sequence task is never swapped
    assert loss_of(swap_cfg, model, data, "sst").item() == loss_of(plain_cfg, model, data, "sst").item()


def test_symmetric_prediction_averages_both_orders_of_a_pair(setup):
    cfg, model, data = setup("model.symmetric_predict=true")
    model.eval()
    sts = data["sts"]
    with torch.no_grad():
        both = model.predict_batch("sts", sts, [0, 1, 2], "cpu")
        one = model("sts", sts.batch([0, 1, 2]))
        other = model("sts", sts.batch([0, 1, 2], swap=[True] * 3))
        torch.testing.assert_close(both, (one + other) / 2)
        assert (one - other).abs().max() > 1e-4  # the orders do differ for a cross-encoder
        model.cfg.symmetric_predict = False
        torch.testing.assert_close(model.predict_batch("sts", sts, [0, 1, 2], "cpu"), one)


def test_loss_weight_scales_the_task_loss(setup):
    plain_cfg, model, data = setup()
    weighted_cfg, _, _ = setup("train.loss_weights={sst: 0.25}")
    model.eval()
    torch.testing.assert_close(loss_of(weighted_cfg, model, data, "sst"), 0.25 * loss_of(plain_cfg, model, data, "sst"))
    torch.testing.assert_close(loss_of(weighted_cfg, model, data, "para"), loss_of(plain_cfg, model, data, "para"))


def test_distillation_with_the_hard_labels_as_teacher_changes_nothing(setup):
    plain_cfg, model, data = setup()
    distill_cfg, _, _ = setup("train.distill_weight=0.7")
    model.eval()
    sst, sts = data["sst"], data["sts"]
    expected = {t: loss_of(plain_cfg, model, data, t) for t in ("sst", "sts")}
    sst.soft, sts.soft = torch.eye(5)[sst.labels], sts.labels.clone()
    for task in ("sst", "sts"):
        torch.testing.assert_close(loss_of(distill_cfg, model, data, task), expected[task])
    sts.soft = sts.labels + 1.0  # another teacher: 0.3 x the loss against the labels + 0.7 x against it
    with torch.no_grad():
        output = model("sts", sts.batch([0, 1, 2, 3])).float()
    mse = torch.nn.functional.mse_loss(output, sts.soft[:4])
    torch.testing.assert_close(loss_of(distill_cfg, model, data, "sts").detach(), 0.3 * expected["sts"].detach() + 0.7 * mse)


def test_a_run_with_every_lever(tiny_checkpoint, small_data_dir, tmp_path):
    """Phrases first (a curriculum), then the tasks with R-Drop, swapped pairs and symmetric
    prediction: the run trains, steps name the phrase task, and dev predictions are written."""
    cfg = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "model.pair_encoding=cross", "model.pooling=mean",
                      "model.symmetric_predict=true", "train.rdrop=1.0", "train.swap_pairs=true",
                      "train.loss_weights={sst_phrases: 0.5}", "data.phrase_min_words=2", "train.predict_test=false",
                      "train.phases=[{name: phrases, tasks: [sst_phrases], epochs: 1, steps_per_epoch: 4, lr: 1e-3},"
                      " {name: rr, tasks: [sst, para, sts], epochs: 1, lr: 1e-3}]")  # fmt: skip
    scores = train(cfg, tmp_path / "run", TrainOptions(progress=False))
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [s["task"] for s in steps[:4]] == ["sst_phrases"] * 4 and steps[4]["task"] == "sst"
    assert set(scores) >= {"sst", "para", "sts", "overall"}
    assert (tmp_path / "run" / "sts-dev-output.csv").exists()
    # Each lever acted. The same run without them: its first step (same weights, batch and
    # dropout) has twice the phrase loss (loss weight 0.5); its later steps differ (R-Drop, swaps).
    plain = tiny_config(tiny_checkpoint, small_data_dir, tmp_path, "model.pair_encoding=cross", "model.pooling=mean",
                        "data.phrase_min_words=2", "train.predict_test=false",
                        "train.phases=[{name: phrases, tasks: [sst_phrases], epochs: 1, steps_per_epoch: 4, lr: 1e-3},"
                        " {name: rr, tasks: [sst, para, sts], epochs: 1, lr: 1e-3}]")  # fmt: skip
    train(plain, tmp_path / "plain", TrainOptions(progress=False))
    plain_steps = [json.loads(line) for line in (tmp_path / "plain" / "steps.jsonl").read_text().splitlines()]
    assert steps[0]["loss"] == pytest.approx(0.5 * plain_steps[0]["loss"], abs=2e-5)  # logged to 5 decimals
    assert [s["loss"] for s in steps[4:]] != [s["loss"] for s in plain_steps[4:]]
    # symmetric prediction: scoring the same weights in one order only gives other STS scores
    one_order = predict_checkpoint(tmp_path / "run", ["model.symmetric_predict=false"], tmp_path / "one_order")
    assert (tmp_path / "one_order" / "sts-dev-output.csv").read_text() != (tmp_path / "run" / "sts-dev-output.csv").read_text()
    assert one_order["sts"] != scores["sts"]


def test_gradient_checkpointing_trains_the_same_run(tiny_checkpoint, small_data_dir, tmp_path):
    """A whole run (dropout on, siamese and cross pairs in one step each) with the encoder's layers
    recomputed in the backward: the same losses, dev scores and predictions as without, to the
    bit (the same kernels on the same inputs with the same dropout masks, tests/test_model.py)."""
    from conftest import train_tiny_run

    phases = "train.phases=[{epochs: 1, lr: 1e-3, steps_per_epoch: 6}]"
    plain = train_tiny_run(tmp_path / "plain", tiny_checkpoint, small_data_dir, [phases, "train.log_every_steps=1"])
    recomputed = train_tiny_run(tmp_path / "ckpt", tiny_checkpoint, small_data_dir,
                                [phases, "train.log_every_steps=1", "model.gradient_checkpointing=true"])  # fmt: skip
    steps = [[{k: v for k, v in json.loads(line).items() if "time" not in k and not k.endswith("_s")}
              for line in (run / "steps.jsonl").read_text().splitlines()] for run in (plain, recomputed)]  # fmt: skip
    assert len(steps[0]) == 6 and steps[0] == steps[1]
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (plain, recomputed)]
    assert metrics[0] == metrics[1]
    for name in ("sst-dev-output.csv", "para-dev-output.csv", "sts-dev-output.csv"):
        assert (plain / name).read_bytes() == (recomputed / name).read_bytes()
