"""`minbert serve`: the micro-batcher on its own; then the app under uvicorn on a loopback port,
with a tiny trained run: every endpoint, answers equal to the Predictor's (alone and batched with
other requests), every kind of bad request (a 4xx with a JSON reason, and the server goes on),
the CLI's flags."""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import request, serving

from minbert import Predictor
from minbert.cli import main as cli_main
from minbert.inference.predictor import Predictions
from minbert.inference.serve import Limits, MicroBatcher, create_app
from minbert.run_files import load_checkpoint
from minbert.tasks import PARAPHRASE_THRESHOLD, SST_LABEL_NAMES

# Batched with other inputs, a text is padded to the batch's longest; the matmuls then run at
# another size and may round differently: probabilities and STS scores moved by up to 4e-7 and
# 1.2e-6 on the main job's model (40 dev inputs of each task, alone vs together), a few float32
# ulps. 1e-5 is ten times that, and a thousand times finer than the page shows (0.1 %, 0.01).
BATCHED_TOLERANCE = 1e-5

LIMITS = Limits(max_batch=64, batch_wait_ms=2, max_texts=8, max_chars=300, max_body_bytes=4096)


# --- the micro-batcher alone ----------------------------------------------------------------


def fake_predict(calls: list, fail_on: str | None = None):
    def predict(task, inputs):
        calls.append(list(inputs))
        if fail_on in inputs:
            raise RuntimeError("boom")
        return Predictions(task, [x.upper() for x in inputs], [x == "long" for x in inputs], 40)

    return predict


def batched(sizes: list[int], max_batch: int, wait_s: float, fail_on: str | None = None, cancel: int | None = None):
    """Requests of `sizes` inputs, queued at once: (the predict calls' inputs, each request's answer)."""
    calls = []

    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher("sst", fake_predict(calls, fail_on), executor, max_batch, wait_s)
            worker = asyncio.create_task(batcher.run())
            requests = [[f"r{i}x{j}" for j in range(n)] for i, n in enumerate(sizes)]
            tasks = [asyncio.create_task(batcher(inputs)) for inputs in requests]
            if cancel is not None:
                await asyncio.sleep(0)  # queued, not yet answered
                tasks[cancel].cancel()
            answers = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            worker.cancel()
            return answers, batcher.stats()

    answers, stats = asyncio.run(main())
    return calls, answers, stats


def test_batcher_gathers_up_to_max_batch_and_never_splits_a_request():
    calls, answers, stats = batched([1, 1, 1, 1, 1, 4, 1], max_batch=3, wait_s=0.05)
    assert [len(c) for c in calls] == [3, 2, 4, 1]  # 3 full; 2 (the 4 would overflow); the 4 alone; the last
    assert answers[5] == ([f"R5X{j}" for j in range(4)], [False] * 4)  # each request gets its own slice
    assert all(answers[i] == ([f"R{i}X0"], [False]) for i in (0, 1, 2, 3, 4, 6))
    assert stats == {"requests": 7, "forwards": 4, "inputs": 10}


def test_batcher_without_batching_runs_one_request_per_forward():
    calls, answers, _ = batched([1, 2, 1], max_batch=1, wait_s=0.0)
    assert [len(c) for c in calls] == [1, 2, 1] and answers[1] == (["R1X0", "R1X1"], [False, False])


def test_batcher_failure_reaches_every_request_of_the_batch_and_the_worker_goes_on():
    calls, answers, _ = batched([1, 1, 2], max_batch=2, wait_s=0.05, fail_on="r0x0")
    assert [len(c) for c in calls] == [2, 2]
    assert [type(a) for a in answers[:2]] == [RuntimeError, RuntimeError]
    assert answers[2] == (["R2X0", "R2X1"], [False, False])


def test_batcher_skips_a_request_whose_client_went_away():
    calls, answers, _ = batched([1, 1, 1], max_batch=8, wait_s=0.05, cancel=1)
    assert calls == [["r0x0", "r2x0"]] and isinstance(answers[1], asyncio.CancelledError)


# --- the app under uvicorn --------------------------------------------------------------------


class Recording:
    """The Predictor, keeping the inputs of each `predict` call the server makes; `fail` makes
    the next calls raise (a fault inside the server, not a bad request)."""

    def __init__(self, predictor: Predictor):
        self.predictor, self.calls, self.fail = predictor, [], False

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def predict(self, task, inputs):
        self.calls.append((task, list(inputs)))
        if self.fail:
            raise RuntimeError("the model fell over")
        return self.predictor.predict(task, inputs)


@pytest.fixture(scope="module")
def run_dir(tiny_runs):
    return tiny_runs["cross"]  # max_length 40: long texts are truncated


@pytest.fixture(scope="module")
def predictor(run_dir):
    return Predictor.load(run_dir)


@pytest.fixture(scope="module")
def server(predictor):
    """(base URL, the Recording the app calls), LIMITS."""
    recording = Recording(predictor)
    with serving(create_app(recording, LIMITS)) as url:
        yield url, recording


def as_served(task: str, predictions: Predictions) -> list[dict]:
    """The Predictor's answers as the API writes them."""
    out = []
    for r, cut in zip(predictions.results, predictions.truncated):
        if task == "sst":
            out.append({"label": r.label, "name": r.name, "probabilities": list(r.probabilities), "truncated": cut})
        elif task == "para":
            out.append({"probability": r.probability, "is_paraphrase": r.positive, "truncated": cut})
        else:
            out.append({"score": r, "truncated": cut})
    return out


LONG = " ".join(["a rather long and winding sentence"] * 8)  # 48 words: over 40 tokens, under 300 characters
TEXTS = ["the movie was a triumph", "dull", "", LONG]
PAIRS = [["How do I learn Python?", "What is the best way to learn Python?"], ["A man plays a guitar.", ""],
         [LONG, "short"]]  # fmt: skip


@pytest.mark.parametrize("task, path, body", [("sst", "/v1/sentiment", {"texts": TEXTS}),
                                              ("para", "/v1/paraphrase", {"pairs": PAIRS}),
                                              ("sts", "/v1/similarity", {"pairs": PAIRS})])  # fmt: skip
def test_each_endpoint_answers_as_the_predictor(server, predictor, task, path, body):
    url, _ = server
    status, answer = request(url, path, body)
    inputs = body.get("texts") or [tuple(p) for p in body["pairs"]]
    expected = as_served(task, predictor.predict(task, inputs))
    assert status == 200 and answer == {"results": expected}  # exactly: the same inputs, the same forward
    assert answer["results"][-1]["truncated"] and not answer["results"][0]["truncated"]


def test_concurrent_requests_share_one_forward_with_the_predictors_answers(predictor):
    recording = Recording(predictor)
    texts = [f"a {adjective} film, {n} stars" for n, adjective in enumerate(["fine", "dreadful", "moving", "flat",
                                                                             "bold", "tired"])]  # fmt: skip
    with serving(create_app(recording, Limits(batch_wait_ms=500))) as url:
        with ThreadPoolExecutor(len(texts)) as pool:
            answers = list(pool.map(lambda t: request(url, "/v1/sentiment", {"texts": [t]}), texts))
        _, health = request(url, "/health")
    assert all(status == 200 for status, _ in answers)
    sizes = [len(inputs) for _, inputs in recording.calls]
    assert sum(sizes) == len(texts) and len(sizes) < len(texts) and max(sizes) > 1, sizes
    assert health["tasks"]["sst"] == {"requests": len(texts), "forwards": len(sizes), "inputs": len(texts)}
    served = {t: a["results"][0] for t, (_, a) in zip(texts, answers)}
    for task, inputs in recording.calls:  # exactly the Predictor's answers for the batch they were in
        assert [served[t] for t in inputs] == as_served(task, predictor.predict(task, inputs))
    for text in texts:  # and, within the padding's rounding, its answers for each text alone
        (alone,) = as_served("sst", predictor.predict("sst", [text]))
        assert served[text]["probabilities"] == pytest.approx(alone["probabilities"], abs=BATCHED_TOLERANCE)
        second, first = sorted(alone["probabilities"])[-2:]
        margin = first - second
        assert margin < 2 * BATCHED_TOLERANCE or served[text]["label"] == alone["label"]


def test_health_model_docs_and_page(server, run_dir):
    url, _ = server
    status, health = request(url, "/health")
    assert status == 200 and health["status"] == "ok" and set(health["tasks"]) == {"sst", "para", "sts"}
    status, model = request(url, "/v1/model")
    assert status == 200 and model["checkpoint"] == str(run_dir) and model["backend"] == "torch"
    assert model["config"]["model"]["pair_encoding"] == "cross" and model["max_length"] == 40
    assert model["dev"] == load_checkpoint(run_dir).dev and set(model["dev"]) >= {"sst", "para", "sts", "overall"}
    assert model["paraphrase_threshold"] == PARAPHRASE_THRESHOLD
    assert model["tasks"]["sst"] == {"endpoint": "/v1/sentiment", "predict_endpoint": "/v1/predict/sst",
                                     "kind": "classification", "input": "texts", "columns": ["sentence"],
                                     "labels": list(SST_LABEL_NAMES)}  # fmt: skip
    assert model["tasks"]["sts"]["scale"] == [0.0, 5.0] and model["tasks"]["para"]["threshold"] == PARAPHRASE_THRESHOLD
    assert model["limits"] == {"max_batch": 64, "batch_wait_ms": 2, "max_texts": 8, "max_chars": 300,
                               "max_body_bytes": 4096}  # fmt: skip
    status, docs = request(url, "/docs")
    assert status == 200 and "swagger" in docs.lower()
    status, spec = request(url, "/openapi.json")
    assert {"/v1/sentiment", "/v1/paraphrase", "/v1/similarity", "/v1/predict/{task}", "/health", "/v1/model"} <= set(spec["paths"])
    assert '"maxItems": 8' in json.dumps(spec) and '"maxLength": 300' in json.dumps(spec)
    status, page = request(url, "/")
    assert status == 200 and 'name="viewport"' in page
    assert all(f'id="{i}"' in page for i in ("sentence", "sentiment-submit", "pair-a", "pair-b", "pair-submit"))


def chunks(total: int):
    for _ in range(total // 1024):
        yield b"x" * 1024


BIG = {"texts": ["\u00e9" * 290] * 8}  # within max_texts and max_chars; over 4096 bytes, as \u00e9 escapes
# fmt: off
BAD_REQUESTS = {
    # name: (path, body, headers, status, words in the reason)
    "texts not a list": ("/v1/sentiment", {"texts": "hello"}, {}, 422, "valid list"),
    "a number for a text": ("/v1/sentiment", {"texts": ["fine", 3]}, {}, 422, "valid string"),
    "a null text": ("/v1/sentiment", {"texts": [None]}, {}, 422, "valid string"),
    "missing field": ("/v1/sentiment", {}, {}, 422, "Field required"),
    "pairs sent to sentiment": ("/v1/sentiment", {"pairs": [["a", "b"]]}, {}, 422, "Extra inputs"),
    "unknown field": ("/v1/paraphrase", {"pairs": [["a", "b"]], "threshold": 0.9}, {}, 422, "Extra inputs"),
    "not an object": ("/v1/sentiment", ["a", "b"], {}, 422, "valid dictionary"),
    "empty texts": ("/v1/sentiment", {"texts": []}, {}, 422, "at least 1 item"),
    "empty pairs": ("/v1/similarity", {"pairs": []}, {}, 422, "at least 1 item"),
    "too many texts": ("/v1/sentiment", {"texts": ["x"] * 9}, {}, 422, "at most 8 items"),
    "too many pairs": ("/v1/paraphrase", {"pairs": [["a", "b"]] * 9}, {}, 422, "at most 8 items"),
    "text too long": ("/v1/sentiment", {"texts": ["x" * 301]}, {}, 422, "at most 300 characters"),
    "pair text too long": ("/v1/similarity", {"pairs": [["a", "x" * 301]]}, {}, 422, "at most 300 characters"),
    "a pair of one": ("/v1/paraphrase", {"pairs": [["a"]]}, {}, 422, "Field required"),
    "a pair of three": ("/v1/paraphrase", {"pairs": [["a", "b", "c"]]}, {}, 422, "at most 2 items"),
    "a pair as a string": ("/v1/similarity", {"pairs": ["a b"]}, {}, 422, "valid"),
    "a lone surrogate": ("/v1/sentiment", b'{"texts": ["ok \\ud800"]}', {}, 422, "valid string"),  # tokenizers refuse
    "invalid UTF-8": ("/v1/sentiment", b'{"texts": ["caf\xe9"]}', {}, 400, "not valid UTF-8"),
    "invalid JSON": ("/v1/sentiment", b'{"texts": ["a",', {}, 422, "not valid JSON"),
    "empty body": ("/v1/sentiment", b"", {}, 422, "Field required"),
    "JSON nested too deep": ("/v1/sentiment", b"[" * 4000, {}, 400, "error parsing the body"),
    "not JSON by its Content-Type": ("/v1/sentiment", b"texts=a", {"Content-Type": "application/x-www-form-urlencoded"},
                                     415, "Content-Type: application/json"),
    "body over the limit": ("/v1/sentiment", BIG, {}, 413, "at most 4,096 bytes"),
    "declared over the limit": ("/v1/sentiment", b"{}", {"Content-Length": "5000"}, 413, "5,000 bytes"),
    "chunked over the limit": ("/v1/sentiment", "chunks", {}, 413, "at most 4,096 bytes"),
    "GET on a POST endpoint": ("/v1/sentiment", None, {}, 405, "Method Not Allowed"),
    "no such endpoint": ("/v1/translate", {"texts": ["a"]}, {}, 404, "Not Found"),
}
# fmt: on


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_a_json_reason_and_the_server_goes_on(server, name):
    url, _ = server
    path, body, headers, status, words = BAD_REQUESTS[name]
    if body == "chunks":
        body = chunks(8192)
    got, answer = request(url, path, body, headers=headers)
    assert got == status and isinstance(answer, dict) and words in json.dumps(answer["detail"]), answer
    assert request(url, "/health")[0] == 200
    assert request(url, "/v1/sentiment", {"texts": ["still here"]})[0] == 200


def test_a_failing_model_is_a_500_with_a_json_reason_and_the_server_goes_on(server):
    url, recording = server
    recording.fail = True
    try:
        status, answer = request(url, "/v1/similarity", {"pairs": [["a", "b"]]})
    finally:
        recording.fail = False
    assert status == 500 and "the model fell over" in answer["detail"]
    assert request(url, "/v1/similarity", {"pairs": [["a", "b"]]})[0] == 200


def test_cli_serve_flags(monkeypatch, run_dir, capsys):
    import minbert.inference.serve as serve_module

    calls = []
    monkeypatch.setattr(serve_module, "serve", lambda *args: calls.append(args))
    assert cli_main(["serve", "--checkpoint", str(run_dir)]) == 0
    from minbert.inference.backends import allowed_cores

    # loopback unless told otherwise; as many threads as the process has cores allowed
    assert calls[-1] == (str(run_dir), "127.0.0.1", 8000, Limits(), "torch", [], allowed_cores())
    assert cli_main(["serve", "--checkpoint", str(run_dir), "--host", "0.0.0.0", "--port", "9000", "--no-batching",
                     "--max-texts", "5", "--max-chars", "100", "--max-body-bytes", "2048",
                     "--threads", "1"]) == 0  # fmt: skip
    assert calls[-1][1:3] == ("0.0.0.0", 9000) and calls[-1][6] == 1
    assert calls[-1][3] == Limits(max_batch=1, batch_wait_ms=0, max_texts=5, max_chars=100, max_body_bytes=2048)
    assert cli_main(["serve", "--checkpoint", str(run_dir), "--max-batch", "0"]) == 2
    assert "max_batch must be at least 1" in capsys.readouterr().err
