"""Tasks as data: the built-in declarations behave as the seed's tasks; tasks declared in a
config train end to end from CSV and JSONL files; every bad declaration gets one message."""

import csv
import json
import random

import numpy as np
import pytest
import scipy.stats

from minbert.cli import main as cli_main
from minbert.config import ConfigError, load_config
from minbert.tasks.data import DataError
from minbert.tasks.metrics import macro_f1, matthews, mean_primary, spearman
from minbert.tasks.spec import BUILTIN, BUILTIN_DIR, TaskError, load_declaration, spec_from_declaration
from minbert.training import TrainOptions, train

WORDS = "good bad fine awful great dull bright cold warm slow fast tall short happy sad".split()


def test_builtin_declarations_are_the_seed_tasks():
    sst, para, sts = BUILTIN["sst"], BUILTIN["para"], BUILTIN["sts"]
    assert (sst.kind, sst.num_classes, sst.text_columns, sst.primary) == ("classification", 5, ("sentence",), "accuracy")
    assert (para.kind, para.text_columns, para.label_column) == ("binary", ("sentence1", "sentence2"), "is_duplicate")
    assert (sts.kind, sts.value_range, sts.primary) == ("regression", (0.0, 5.0), "pearson")
    assert sst.parse_label("4") == 4 and para.parse_label("1") == 1.0 and sts.parse_label("3.2") == 3.2
    for spec, raw in [(sst, "5"), (para, "2"), (sts, "5.5"), (sts, "nan")]:
        with pytest.raises(ValueError):
            spec.parse_label(raw)
    assert [sst.format_prediction(3), para.format_prediction(1.0), sts.format_prediction(2.5)] == ["3", "1", "2.5000"]


def explicit(name: str) -> dict:
    """A built-in declaration with every default written out, as a user could declare it."""
    d = load_declaration(BUILTIN_DIR / f"{name}.yaml")
    kind = d["kind"]
    d |= {"id": "id", "pair_encoding": "cross", "loss": {"classification": "cross_entropy", "binary": "bce"}.get(kind, "mse"),
          "output_prefix": name, "head": {"classification": "mlp", "binary": "linear", "regression": "linear"}[kind]}
    return d


def tiny_run(tiny_checkpoint, data_dir, tmp_path, *extra):
    return load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={data_dir}", f"data.cache_dir={tmp_path / 'cache'}",
        "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1", "train.predict_test=false",
        "model.pair_encoding=cross", *extra,
    ])  # fmt: skip


def test_declared_seed_tasks_train_like_the_builtin_ones(tiny_checkpoint, small_data_dir, tmp_path):
    """Before (the built-ins by name) and after (the same tasks declared inline, every default
    spelled out): the same losses at every step."""
    phases = "train.phases=[{epochs: 1, lr: 2e-3}, {tasks: [sts], epochs: 1, lr: 1e-3}]"
    train(tiny_run(tiny_checkpoint, small_data_dir, tmp_path, phases), tmp_path / "builtin", TrainOptions(progress=False))
    inline = json.dumps([explicit(n) for n in ("sst", "para", "sts")])
    train(tiny_run(tiny_checkpoint, small_data_dir, tmp_path, phases, f"tasks={inline}"), tmp_path / "inline", TrainOptions(progress=False))
    steps = [[json.loads(line) for line in (tmp_path / run / "steps.jsonl").read_text().splitlines()]
             for run in ("builtin", "inline")]  # fmt: skip
    assert [s["task"] for s in steps[0]] == [s["task"] for s in steps[1]] and len(steps[0]) == 24
    np.testing.assert_allclose([s["loss"] for s in steps[1]], [s["loss"] for s in steps[0]], rtol=0, atol=1e-6)


def write_rows(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="," if fmt == "csv" else "\t")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def own_tasks(tmp_path):
    """Two tasks of a user's own: 3-class topic of one text (CSV) and a 1-10 rating of a pair (JSONL)."""
    rng, data = random.Random(0), tmp_path / "own"
    data.mkdir()
    for split, n in (("train", 40), ("dev", 16), ("test", 10)):
        topic = [{"uid": f"{split}{i}", "text": " ".join(rng.choices(WORDS, k=rng.randint(2, 9))), "topic": i % 3}
                 for i in range(n)]  # fmt: skip
        rating = [{"uid": f"{split}{i}", "a": " ".join(rng.choices(WORDS, k=4)), "b": " ".join(rng.choices(WORDS, k=3)),
                   "stars": round(rng.uniform(1, 10), 1)} for i in range(n)]  # fmt: skip
        for rows, name, fmt in ((topic, "topic", "csv"), (rating, "rating", "jsonl")):
            if split == "test":
                rows = [{k: v for k, v in r.items() if k not in ("topic", "stars")} for r in rows]
            write_rows(data / f"{name}-{split}.{fmt}", rows, fmt)
    topic = {"name": "topic", "kind": "classification", "num_classes": 3, "label_names": ["x", "y", "z"],
             "input": ["text"], "label": "topic", "id": "uid", "metrics": ["macro_f1", "accuracy", "matthews"],
             "files": {s: f"topic-{s}.csv" for s in ("train", "dev", "test")}}  # fmt: skip
    rating = {"name": "rating", "kind": "regression", "range": [1, 10], "input": ["a", "b"], "label": "stars",
              "id": "uid", "pair_encoding": "siamese", "metrics": ["spearman", "pearson"], "loss": "mse+cosent",
              "files": {s: f"rating-{s}.jsonl" for s in ("train", "dev", "test")}}  # fmt: skip
    return data, topic, rating


def test_own_tasks_train_end_to_end(own_tasks, tiny_checkpoint, tmp_path, capsys):
    data, topic, rating = own_tasks
    (tmp_path / "rating.yaml").write_text(json.dumps(rating))  # a task file (JSON is YAML)
    phases = ("train.phases=[{mode: frozen, tasks: [topic, rating], epochs: 1, lr: 1e-3},"
              " {tasks: [topic, rating], sampler: proportional, epochs: 2, lr: 2e-3}]")  # fmt: skip
    cfg = tiny_run(tiny_checkpoint, data, tmp_path, f"tasks=[{json.dumps(topic)}, {tmp_path / 'rating.yaml'}]", phases,
                   "train.predict_test=true")  # fmt: skip
    assert cfg.tasks[1]["name"] == "rating"  # the file's declaration, inlined: config.yaml is whole
    scores = train(cfg, tmp_path / "run", TrainOptions(progress=False))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"topic", "topic_accuracy", "topic_matthews", "rating", "rating_pearson", "overall",
                            "overall_formula", "data"}  # fmt: skip
    assert metrics["overall"] == pytest.approx(mean_primary({"topic": ("macro_f1", metrics["topic"]),
                                                             "rating": ("spearman", metrics["rating"])}), abs=1e-4)  # fmt: skip
    assert metrics["overall_formula"].startswith("mean over tasks") and scores["overall"] == metrics["overall"]
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert {s["task"] for s in steps} == {"topic", "rating"} and all(np.isfinite(s["loss"]) for s in steps)
    for task, check in (("topic", lambda v: v in {"0", "1", "2"}), ("rating", lambda v: 1.0 <= float(v) <= 10.0)):
        for split, n in (("dev", 16), ("test", 10)):
            rows = list(csv.reader((tmp_path / "run" / f"{task}-{split}-output.csv").open()))
            assert rows[0] == ["id", "prediction"] and [r[0] for r in rows[1:]] == [f"{split}{i}" for i in range(n)]
            assert all(check(r[1]) for r in rows[1:])
    from minbert.inference.predictor import Predictor

    predictor = Predictor.load(tmp_path / "run")  # asked by task name, like the seed's tasks
    texts = [r["text"] for r in csv.DictReader((data / "topic-dev.csv").open())]
    written = [r[1] for r in csv.reader((tmp_path / "run" / "topic-dev-output.csv").open())][1:]
    assert [str(r.label) for r in predictor.predict("topic", texts).results] == written
    assert all(1.0 <= s <= 10.0 for s in predictor.predict("rating", [("good fast", "bad slow")]).results)
    capsys.readouterr()
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {k: v for k, v in metrics.items() if k not in ("overall_formula", "data")}


BAD_DECLARATIONS = [
    ({"kind": "ranking"}, "kind 'ranking' is not one of"),
    ({"kind": "classification", "num_classes": 1}, "classification needs num_classes >= 2"),
    ({"label_names": ["a", "b"]}, "label_names has 2 names for 3 classes"),
    ({"kind": "regression", "num_classes": None, "label_names": None}, "regression needs range"),
    ({"input": ["a", "b", "c"]}, "input must name one text column or two"),
    ({"files": {"train": "t.csv"}}, "files must give train and dev"),
    ({"metrics": ["pearson"]}, "metric 'pearson' does not fit a classification task"),
    ({"metrics": ["bleu"]}, "each must be one of"),
    ({"primary": "bleu"}, "primary 'bleu' is not among metrics"),
    ({"head": "cosine"}, "head 'cosine' is not one of"),
    ({"format": "xlsx"}, "format 'xlsx' is not one of"),
    ({"colour": "red"}, "Key 'colour' not in 'TaskDeclaration'"),
]


@pytest.mark.parametrize("change, message", BAD_DECLARATIONS)
def test_bad_declarations_are_refused(own_tasks, change, message):
    _, topic, _ = own_tasks
    with pytest.raises(TaskError, match=message):
        spec_from_declaration({**topic, **change})
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"tasks=[{json.dumps({**topic, **change})}]", "train.phases.0.tasks=[topic]"])


def test_config_task_entries_are_checked():
    with pytest.raises(ConfigError, match="tasks.0: 'nli' is neither a built-in task"):
        load_config(None, ["tasks=[nli]"])
    with pytest.raises(ConfigError, match="no_such.yaml: task file not found"):
        load_config(None, ["tasks=[sst, no_such.yaml]"])
    with pytest.raises(ConfigError, match="a second task named 'sst'"):
        load_config(None, ["tasks=[sst, sst]"])
    with pytest.raises(ConfigError, match=r"train.phases.0.tasks: \['sst', 'para', 'sts'\] must be a non-empty subset of"):
        load_config(None, ["tasks=[sst]"])


@pytest.mark.parametrize("damage, where, reason", [
    (lambda rows: [{k: v for k, v in r.items() if k != "topic"} for r in rows], ":1:", "missing column(s) topic"),
    (lambda rows: rows[:3] + [{**rows[3], "topic": 3}] + rows[4:], ":5:", "bad topic '3': expected an integer 0-2"),
])  # fmt: skip
def test_bad_task_data_names_file_and_line(own_tasks, tiny_checkpoint, tmp_path, damage, where, reason, capsys):
    data, topic, _ = own_tasks
    rows = list(csv.DictReader((data / "topic-train.csv").open()))
    write_rows(data / "topic-train.csv", damage(rows), "csv")
    cfg = tiny_run(tiny_checkpoint, data, tmp_path, f"tasks=[{json.dumps(topic)}]", "train.phases.0.tasks=[topic]")
    with pytest.raises(DataError, match=f"topic-train.csv{where} .*{reason.replace('(', '.').replace(')', '.')}"):
        train(cfg, tmp_path / "run", TrainOptions(progress=False))
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_out_of_range_rating_and_missing_file(own_tasks, tiny_checkpoint, tmp_path, capsys):
    data, _, rating = own_tasks
    good = (data / "rating-dev.jsonl").read_text()
    lines = good.splitlines()
    lines[6] = json.dumps({**json.loads(lines[6]), "stars": 11})
    (data / "rating-dev.jsonl").write_text("\n".join(lines) + "\n")
    args = ["train", "--no-progress", "--out", str(tmp_path / "run"), f"--model={tiny_checkpoint}", f"--data.dir={data}",
            f"--tasks=[{json.dumps(rating)}]", "--train.phases=[{tasks: [rating], epochs: 1}]"]  # fmt: skip
    assert cli_main(args) == 2
    assert "rating-dev.jsonl:7: bad stars '11': expected a score between 1 and 10" in capsys.readouterr().err
    (data / "rating-dev.jsonl").write_text(good)
    (data / "rating-test.jsonl").unlink()
    assert cli_main(args + ["--overwrite"]) == 2
    assert "rating-test.jsonl: file not found" in capsys.readouterr().err


def test_metrics_against_references():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    p[:150] = y[:150]  # better than chance
    f1s = []
    for c in range(3):
        tp, fp, fn = np.sum((p == c) & (y == c)), np.sum((p == c) & (y != c)), np.sum((p != c) & (y == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert macro_f1(p, y) == pytest.approx(np.mean(f1s))
    yb, pb = y % 2, p % 2  # two classes: the textbook MCC
    tp, tn = np.sum((pb == 1) & (yb == 1)), np.sum((pb == 0) & (yb == 0))
    fp, fn = np.sum((pb == 1) & (yb == 0)), np.sum((pb == 0) & (yb == 1))
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert matthews(pb, yb) == pytest.approx(mcc) and matthews(y, y) == pytest.approx(1.0)
    x = rng.normal(size=200).round(1)  # ties
    z = x + rng.normal(size=200)
    assert spearman(z, x) == pytest.approx(scipy.stats.spearmanr(z, x)[0], abs=1e-12)
    assert mean_primary({"a": ("accuracy", 0.5), "b": ("pearson", 0.0)}) == pytest.approx(0.5)
