"""A run's tasks are a value it carries, not a global: two models with different task sets in one
process each answer their own tasks; a four-task run's Hugging Face and ONNX exports load in a
fresh process; results are named by kind; the server routes every task of the run."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import request, serving

from minbert import Binary, Classification, Predictor
from minbert.cli import main as cli_main
from minbert.tasks import TaskSet

REPO = Path(__file__).resolve().parent.parent.parent


def test_two_predictors_with_different_tasks_in_one_process(four_task_run, tiny_runs):
    four = Predictor.load(four_task_run)
    seed = Predictor.load(tiny_runs["cross"])  # loaded second: it must not change what `four` knows
    assert list(four.tasks) == ["sst", "para", "sts", "cfimdb"] and list(seed.tasks) == ["sst", "para", "sts"]
    (review,) = four.predict("cfimdb", ["a wonderful film"]).results
    assert isinstance(review, Binary) and 0 < review.probability < 1 and review.positive == (review.probability > 0.5)
    with pytest.raises(ValueError, match=r"task 'cfimdb' is not one of \('sst', 'para', 'sts'\)"):
        seed.predict("cfimdb", ["a wonderful film"])
    assert isinstance(seed.sentiment(["fine"])[0], Classification) and isinstance(four.sentiment(["fine"])[0], Classification)
    assert four.model_cfg.pair_encoding == "cross" and TaskSet.of(four.run_config.tasks) == four.tasks


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_a_four_task_export_loads_in_a_fresh_process(four_task_run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / fmt
    assert cli_main(["export", "--checkpoint", str(four_task_run), "--out", str(out), "--format", fmt]) == 0
    expected = Predictor.load(four_task_run).predict("cfimdb", ["a wonderful film", "dull"]).results
    backend = "onnx" if fmt == "onnx" else "torch"
    code = (f"from minbert import Predictor; p = Predictor.load({str(out)!r}, backend={backend!r}); "
            "print(repr([round(r.probability, 4) for r in p.predict('cfimdb', ['a wonderful film', 'dull']).results]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert eval(done.stdout.strip()) == pytest.approx([round(r.probability, 4) for r in expected], abs=2e-4)


def test_the_server_routes_every_task_of_the_run(four_task_run):
    from minbert.inference.serve import create_app

    predictor = Predictor.load(four_task_run)
    expected = predictor.predict("cfimdb", ["a wonderful film"]).results[0]
    with serving(create_app(predictor)) as url:
        status, body = request(url, "/v1/predict/cfimdb", {"texts": ["a wonderful film"]})
        assert status == 200, body
        (result,) = body["results"]
        assert result == {"probability": pytest.approx(expected.probability, abs=1e-6), "positive": expected.positive,
                          "truncated": False}  # fmt: skip
        status, body = request(url, "/v1/predict/sts", {"pairs": [["a man plays", "a person plays"]]})
        assert status == 200 and set(body["results"][0]) == {"score", "truncated"}
        status, body = request(url, "/v1/predict/sst", {"texts": ["fine"]})
        assert status == 200 and set(body["results"][0]) == {"label", "name", "probabilities", "truncated"}
        status, body = request(url, "/v1/predict/cfimdb", {"pairs": [["a", "b"]]})
        assert status == 422 and "takes 'texts'" in body["detail"]
        status, body = request(url, "/v1/predict/nli", {"texts": ["a"]})
        assert status == 404 and "no task 'nli'" in body["detail"]
        status, model = request(url, "/v1/model")
        assert model["tasks"]["cfimdb"] == {"endpoint": "/v1/predict/cfimdb", "predict_endpoint": "/v1/predict/cfimdb",
                                            "kind": "binary", "input": "texts", "columns": ["sentence"],
                                            "threshold": 0.5}  # fmt: skip
        status, health = request(url, "/health")
        assert set(health["tasks"]) == {"sst", "para", "sts", "cfimdb"}


def test_cli_predict_answers_a_declared_task(four_task_run, capsys):
    assert cli_main(["predict", "--checkpoint", str(four_task_run), "--task", "cfimdb", "a wonderful film"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["positive", "probability", "text"] and "a wonderful film" in out
