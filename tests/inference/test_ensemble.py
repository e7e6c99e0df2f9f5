"""Ensembles of tiny trained runs: the averaging, one member equals its run, two members equal
the average taken by hand, soft labels round-trip, mismatched members are refused, the Predictor
on an ensemble directory, `minbert ensemble` errors."""

import json
import shutil

import pytest
import torch
from conftest import TINY_RUN_VARIANTS, check_prediction_files, train_tiny_run

from minbert import Predictor
from minbert.cli import main as cli_main
from minbert.tasks.data import DataError
from minbert.inference.ensemble import combine, predict_ensemble
from minbert.tasks.data import load_soft_labels, soft_labels_path, write_soft_labels
from minbert.evaluation import dev_scores, predict_soft
from minbert.inference.predictor import split_inputs
from minbert.run_files import load_checkpoint, save_checkpoint
from minbert.tasks import BUILTIN, TaskSet, head_task
from minbert.runs import encode_all, load_trained, read_all

SEED = ("sst", "para", "sts")
SOFT_TASKS = (*SEED, "sst_phrases")  # the train-only phrases, by the SST head


@pytest.fixture(scope="module")
def cross_runs(tiny_runs, tiny_checkpoint, small_data_dir, tmp_path_factory):
    """The cross-encoded tiny run, and another of the same encoding with another seed and pooling."""
    extra = [*TINY_RUN_VARIANTS["cross"], "train.seed=2", "model.pooling=cls"]
    other = train_tiny_run(tmp_path_factory.mktemp("run_cross2") / "run", tiny_checkpoint, small_data_dir, extra)
    return [tiny_runs["cross"], other]


@pytest.fixture(scope="module")
def pair_dir(cross_runs, small_data_dir, tmp_path_factory):
    """`minbert ensemble` of the two cross-encoded runs, with soft labels for the three tasks and the SST phrases."""
    out = tmp_path_factory.mktemp("ensemble") / "pair"
    args = ["ensemble", *map(str, cross_runs), "--out", str(out), "--soft-labels", ",".join(SOFT_TASKS),
            "--no-progress", f"--data.dir={small_data_dir}"]  # fmt: skip
    assert cli_main(args) == 0
    return out


def test_pseudo_logits_decide_as_the_averaged_soft_predictions():
    torch.manual_seed(0)
    sst = [torch.randn(50, 5) * 3 for _ in range(3)] + [torch.full((50, 5), -1e4)]  # an overconfident member too
    sst[-1][:, 0] = 1e4
    mean_p = torch.stack([o.softmax(-1) for o in sst]).mean(0)
    assert torch.equal(combine(BUILTIN["sst"], sst).argmax(-1), mean_p.argmax(-1))
    torch.testing.assert_close(combine(BUILTIN["sst"], sst).softmax(-1), mean_p)
    para = [torch.randn(50) * 3 for _ in range(3)] + [torch.full((50,), 1e4)]
    mean_p = torch.stack([o.sigmoid() for o in para]).mean(0)
    assert torch.equal(BUILTIN["para"].predict(combine(BUILTIN["para"], para)), (mean_p > 0.5).long())
    torch.testing.assert_close(combine(BUILTIN["para"], para).sigmoid(), mean_p)
    sts = [torch.rand(50) * 5 for _ in range(3)]
    torch.testing.assert_close(combine(BUILTIN["sts"], sts), torch.stack(sts).mean(0))
    for task, outputs in (("sst", sst), ("para", para), ("sts", sts)):
        assert torch.isfinite(combine(BUILTIN[task], outputs)).all()
        for member in outputs:  # one member decides as it does alone
            assert torch.equal(BUILTIN[task].predict(combine(BUILTIN[task], [member])), BUILTIN[task].predict(member)), task


def test_one_member_is_its_run(tiny_runs, tmp_path):
    run, out = tiny_runs["cross"], tmp_path / "one"
    scores = predict_ensemble([run], out, progress=False)
    for name in sorted(p.name for p in run.glob("*-output.csv")):
        assert (out / name).read_bytes() == (run / name).read_bytes(), name
    theirs = json.loads((run / "metrics.json").read_text())
    ours = json.loads((out / "metrics.json").read_text())
    del theirs["data"]  # the fingerprints of the files the run read: the ensemble's metrics hold scores only
    assert scores == {k: v for k, v in theirs.items() if k != "overall_formula"}
    assert ours == {**theirs, "members": [{"path": str(run.resolve()), "dev": scores}]}


def test_two_members_average_as_by_hand(pair_dir, cross_runs, small_data_dir):
    check_prediction_files(pair_dir, small_data_dir)
    metrics = json.loads((pair_dir / "metrics.json").read_text())
    manifest = json.loads((pair_dir / "ensemble.json").read_text())
    assert manifest == {"members": [str(r.resolve()) for r in cross_runs], "overrides": [f"data.dir={small_data_dir}"],
                        "member_count": 2, "cost": "2 forward passes per input, one per member"}  # fmt: skip
    soft, members = {}, []
    for run in cross_runs:
        model, tokenizer, cfg = load_trained(run)
        data = encode_all(read_all(cfg, {"dev": SEED, "train": SOFT_TASKS}), tokenizer, cfg)
        preds = {}
        for split, tasks in data.items():
            for task, encoded in tasks.items():
                preds[split, task], p = predict_soft(model, head_task(task), encoded, cfg.train.eval_batch_size)
                soft.setdefault((split, task), []).append(torch.tensor(p))
        members.append({k: round(v, 4) for k, v in dev_scores({t: preds["dev", t] for t in SEED}, data["dev"]).items()})
    assert [m["dev"] for m in metrics["members"]] == members
    assert members[0] == {k: v for k, v in json.loads((cross_runs[0] / "metrics.json").read_text()).items()
                          if k not in ("overall_formula", "data")}  # fmt: skip
    mean = {key: torch.stack(ps).mean(0) for key, ps in soft.items()}
    by_hand = {"sst": mean["dev", "sst"].argmax(-1).tolist(), "para": (mean["dev", "para"] > 0.5).long().tolist(),
               "sts": mean["dev", "sts"].tolist()}  # fmt: skip
    expected = {k: round(v, 4) for k, v in dev_scores(by_hand, data["dev"]).items()}
    assert {k: metrics[k] for k in expected} == expected
    assert metrics["overall_formula"].startswith("CS224N")
    # soft labels: the same averages, aligned to any order of the ids asked for
    for task in SOFT_TASKS:
        ids = data["train"][task].ids
        torch.testing.assert_close(load_soft_labels(pair_dir, task, ids), mean["train", task], atol=1e-6, rtol=0)
        shape = (len(ids), 5) if head_task(task) == "sst" else (len(ids),)
        assert load_soft_labels(pair_dir, task, ids).shape == shape
        picked = list(range(len(ids)))[::-3]
        torch.testing.assert_close(load_soft_labels(pair_dir, task, [ids[i] for i in picked]),
                                   load_soft_labels(pair_dir, task, ids)[picked])  # fmt: skip


def test_a_run_distils_from_the_soft_labels(pair_dir, tiny_checkpoint, small_data_dir, tmp_path):
    """A run trains on the ensemble's soft labels; and a student of a teacher that is sure of one
    answer (SST class 0, every pair a paraphrase, every STS score 5) moves toward it: its training-set
    predictions lean further that way than the same run's without the teacher."""
    phases = f"train.phases=[{{epochs: 1, lr: 1e-3, tasks: [{', '.join(SOFT_TASKS)}]}}]"
    run = train_tiny_run(tmp_path / "student", tiny_checkpoint, small_data_dir,
                         [*TINY_RUN_VARIANTS["cross"], f"train.distill_from={pair_dir}", phases])  # fmt: skip
    assert set(json.loads((run / "metrics.json").read_text())) >= {"sst", "para", "sts", "overall"}
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    sure = {"sst": lambda n: torch.eye(5)[[0] * n], "para": lambda n: torch.ones(n), "sts": lambda n: torch.full((n,), 5.0)}
    for task, make in sure.items():
        ids = [json.loads(line)["id"] for line in (pair_dir / f"train-soft-{task}.jsonl").read_text().splitlines()]
        write_soft_labels(soft_labels_path(teacher, task), ids, make(len(ids)))
    runs = {w: train_tiny_run(tmp_path / f"w{w}", tiny_checkpoint, small_data_dir,
                              [*TINY_RUN_VARIANTS["cross"], f"train.distill_from={teacher}", f"train.distill_weight={w}",
                               phases])  # fmt: skip
            for w in (0, 1)}  # 0: the soft labels are read but weigh nothing, so the run is the plain one
    lean = {}
    for w, run_dir in runs.items():
        model, tokenizer, cfg = load_trained(run_dir)
        train = encode_all(read_all(cfg, {"train": SEED}), tokenizer, cfg)["train"]
        for task in SEED:
            _, soft = predict_soft(model, task, train[task], cfg.train.eval_batch_size)
            soft = torch.tensor(soft)
            lean[w, task] = (soft[:, 0] if task == "sst" else soft).mean().item()  # P(class 0), P(paraphrase), score
    for task in SEED:
        assert lean[1, task] > lean[0, task], (task, lean)


def test_predictor_on_an_ensemble_dir(pair_dir, small_data_dir, capsys):
    p = Predictor.load(pair_dir)
    dev = split_inputs(small_data_dir, TaskSet.seed(), "dev")
    rows = (pair_dir / "sst-dev-output.csv").read_text().splitlines()[1:]
    assert [str(s.label) for s in p.sentiment(dev["sst"])] == [r.split(",")[1] for r in rows]
    rows = (pair_dir / "para-dev-output.csv").read_text().splitlines()[1:]
    assert [str(int(r.positive)) for r in p.paraphrase(dev["para"])] == [r.split(",")[1] for r in rows]
    metrics = json.loads((pair_dir / "metrics.json").read_text())
    assert p.dev_scores == {k: v for k, v in metrics.items() if k not in ("overall_formula", "members")}
    with pytest.raises(ValueError, match="torch backend only"):
        Predictor.load(pair_dir, backend="onnx")
    assert cli_main(["predict", "--checkpoint", str(pair_dir), "--task", "sst", "a fine film"]) == 0
    assert "a fine film" in capsys.readouterr().out


def test_soft_labels_refuse_bad_files(pair_dir, tmp_path):
    good = (pair_dir / "train-soft-para.jsonl").read_text().splitlines(keepends=True)
    first_id = json.loads(good[0])["id"]
    with pytest.raises(DataError, match="no soft label for id 'nope'"):
        load_soft_labels(pair_dir, "para", [first_id, "nope"])
    with pytest.raises(DataError, match="train-soft-cfimdb.jsonl: no soft labels"):
        load_soft_labels(pair_dir, "cfimdb", [first_id])
    for bad, reason in [('{"id": "x", "soft": 0.5\n', "not valid JSON"), ('{"id": "x"}\n', "expected a JSON object"),
                        ('{"id": "x", "soft": "0.5"}\n', "finite number"), ('{"id": "x", "soft": NaN}\n', "finite"),
                        ('{"id": "x", "soft": [0.5, 0.5]}\n', "earlier lines"), (good[0], "duplicate id")]:  # fmt: skip
        (tmp_path / "train-soft-para.jsonl").write_text(good[0] + good[1] + bad + "".join(good[2:]))
        with pytest.raises(DataError, match=f"train-soft-para.jsonl:3: .*{reason}"):
            load_soft_labels(tmp_path, "para", [first_id])


def altered_copy(run, out, tasks=None, vocab_dir=None):
    """A copy of `run`'s best checkpoint with only some of its tasks (heads dropped), or reading its
    vocab from another checkpoint directory."""
    ckpt = load_checkpoint(run)
    if tasks is not None:
        ckpt.config["tasks"] = list(tasks)
        for phase in ckpt.config["train"]["phases"]:
            phase["tasks"] = list(tasks)
        ckpt.config["train"]["rdrop_tasks"] = [t for t in ckpt.config["train"]["rdrop_tasks"] if t in tasks]
        ckpt.model = {k: v for k, v in ckpt.model.items() if not k.startswith("heads.") or k.split(".")[1] in tasks}
    if vocab_dir is not None:
        ckpt.config["model"]["checkpoint"] = str(vocab_dir)
    save_checkpoint(ckpt, out)
    return out


def test_mismatched_members_are_refused(tiny_runs, tiny_checkpoint, tmp_path):
    cross, siamese = tiny_runs["cross"], tiny_runs["siamese"]
    with pytest.raises(ValueError, match=rf"{siamese}: differs from the first member.*pair_encoding.*max_length"):
        predict_ensemble([cross, siamese], tmp_path / "out")
    two = altered_copy(cross, tmp_path / "two.safetensors", tasks=["sst", "para"])
    with pytest.raises(ValueError, match=r"two.safetensors: differs .* tasks \(\['para', 'sst'\], not"):
        predict_ensemble([cross, two], tmp_path / "out")
    other_vocab = tmp_path / "bert"
    shutil.copytree(tiny_checkpoint, other_vocab)
    words = (other_vocab / "vocab.txt").read_text().splitlines()
    words[-2], words[-1] = words[-1], words[-2]
    (other_vocab / "vocab.txt").write_text("\n".join(words) + "\n")
    vocab = altered_copy(cross, tmp_path / "vocab.safetensors", vocab_dir=other_vocab)
    with pytest.raises(ValueError, match="vocab.safetensors: differs .* tokenizer vocab"):
        predict_ensemble([cross, vocab], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("case, reason", [
    ("missing run", "no such checkpoint file"),
    ("unknown soft-label task", "--soft-labels nope: not a task of the members"),
    ("into a run", "holds a training run"),
])  # fmt: skip
def test_cli_errors_are_one_line(tiny_runs, tmp_path, capsys, case, reason):
    run, out = str(tiny_runs["cross"]), str(tmp_path / "out")
    args = {"missing run": [run, str(tmp_path / "missing.safetensors"), "--out", out],
            "unknown soft-label task": [run, "--out", out, "--soft-labels", "sst,nope"],
            "into a run": [run, "--out", run]}[case]  # fmt: skip
    assert cli_main(["ensemble", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("minbert: error: ") and reason in err, err
