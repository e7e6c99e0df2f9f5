"""`minbert serve`: the micro-batcher on its own; then the app under uvicorn on a loopback port,
with a tiny trained run: every endpoint, answers equal to the Predictor's (alone and batched with
other requests), every kind of bad request (a 4xx with a JSON reason, and the server goes on),
the CLI's flags; then the server exposed: the API key, the concurrency limit, stalled clients, a
taken port, and `python -m minbert serve` itself with a key."""

import asyncio
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import exchange, request, serving

from minbert import Predictor
from minbert.cli import main as cli_main
from minbert.inference.predictor import Predictions
from minbert.inference.serve import Limits, MicroBatcher, create_app
from minbert.inference.serve_limits import API_KEY_ENV, Access
from minbert.run_files import load_checkpoint
from minbert.tasks import PARAPHRASE_THRESHOLD, SST_LABEL_NAMES

# Batched with other inputs, a text is padded to the batch's longest; the matmuls then run at
# another size and may round differently: probabilities and STS scores moved by up to 4e-7 and
# 1.2e-6 on the main job's model (40 dev inputs of each task, alone vs together), a few float32
# ulps. 1e-5 is ten times that, and a thousand times finer than the page shows (0.1 %, 0.01).
BATCHED_TOLERANCE = 1e-5

LIMITS = Limits(max_batch=64, batch_wait_ms=2, max_texts=8, max_chars=300, max_body_bytes=4096)
KEY = "test-key-0123456789abcdef"  # an API key for the tests (keys are at least 16 characters)


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
    assert (health["in_flight"], health["max_concurrent"], health["refused"]) == (0, 64, 0)
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
                               "max_body_bytes": 4096, "max_concurrent": 64, "header_timeout_s": 10.0,
                               "body_timeout_s": 30.0, "keep_alive_s": 5.0}  # fmt: skip
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
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert cli_main(["serve", "--checkpoint", str(run_dir)]) == 0
    from minbert.inference.backends import allowed_cores

    # loopback and no key unless told otherwise; as many threads as the process has cores allowed
    assert calls[-1] == (str(run_dir), Access("127.0.0.1", 8000), Limits(), "torch", [], allowed_cores(), "auto")
    monkeypatch.setenv(API_KEY_ENV, KEY)
    assert cli_main(["serve", "--checkpoint", str(run_dir), "--host", "0.0.0.0", "--port", "9000", "--no-batching",
                     "--max-texts", "5", "--max-chars", "100", "--max-body-bytes", "2048", "--max-concurrent", "7",
                     "--header-timeout-s", "2.5", "--body-timeout-s", "4", "--keep-alive-s", "1",
                     "--threads", "1"]) == 0  # fmt: skip
    assert calls[-1][1] == Access("0.0.0.0", 9000, KEY) and calls[-1][5] == 1
    assert calls[-1][2] == Limits(max_batch=1, batch_wait_ms=0, max_texts=5, max_chars=100, max_body_bytes=2048,
                                  max_concurrent=7, header_timeout_s=2.5, body_timeout_s=4, keep_alive_s=1)  # fmt: skip
    assert capsys.readouterr().err == ""  # the key from the environment: no warning
    for flags, reason in [(["--max-batch", "0"], "max_batch must be at least 1"),
                          (["--max-concurrent", "0"], "max_concurrent must be at least 1"),
                          (["--header-timeout-s", "0"], "header_timeout_s must be over 0"),
                          (["--body-timeout-s", "nan"], "body_timeout_s must be over 0"),
                          (["--keep-alive-s", "7200"], "keep_alive_s must be over 0 and at most 3600")]:  # fmt: skip
        assert cli_main(["serve", "--checkpoint", str(run_dir), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"minbert: error: {reason}") and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, env_key, status, stderr", [
    (["--host", "0.0.0.0"], None, 2, "minbert: error: --host 0.0.0.0 is not a loopback address: anyone who can "
                                     "reach port 8000 could use the model; set MINBERT_API_KEY (or --api-key), or "
                                     "pass --no-auth to serve it without a key on purpose\n"),
    (["--host", "192.168.1.5", "--port", "9000"], None, 2, "minbert: error: --host 192.168.1.5 is not a loopback"),
    (["--host", "myhost.example"], None, 2, "minbert: error: --host myhost.example is not a loopback"),
    (["--host", "0.0.0.0", "--no-auth"], None, 0, "minbert: warning: serving 0.0.0.0:8000 without an API key "
                                                  "(--no-auth): anyone who can reach it can use the model\n"),
    (["--host", "0.0.0.0", "--no-auth"], KEY, 2, "minbert: error: --no-auth and an API key (--api-key or "
                                                 "MINBERT_API_KEY) contradict each other"),
    (["--host", "::", "--api-key", KEY], None, 0, "minbert: warning: --api-key shows the key to every user of this "
                                                  "machine in `ps`; MINBERT_API_KEY does not\n"),
    (["--host", "0.0.0.0"], KEY, 0, ""),
    (["--host", "127.0.0.2"], None, 0, ""),
    (["--host", "::1"], None, 0, ""),
    (["--host", "localhost"], None, 0, ""),
    (["--api-key", "short"], None, 2, "minbert: error: the API key is 5 characters; use at least 16"),
    (["--api-key", "has a space in it, long enough"], None, 2, "minbert: error: the API key must be printable ASCII"),
    ([], "", 2, "minbert: error: the API key (--api-key or MINBERT_API_KEY) is empty"),
])  # fmt: skip
def test_cli_serve_wants_a_key_off_loopback(monkeypatch, run_dir, capsys, argv, env_key, status, stderr):
    import minbert.inference.serve as serve_module

    calls = []
    monkeypatch.setattr(serve_module, "serve", lambda *args: calls.append(args))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    if env_key is not None:
        monkeypatch.setenv(API_KEY_ENV, env_key)
    assert cli_main(["serve", "--checkpoint", str(run_dir), *argv]) == status
    err = capsys.readouterr().err
    assert err.startswith(stderr) and err.count("\n") == (1 if stderr else 0), err
    assert len(calls) == (status == 0)  # refused: nothing served, nothing loaded
    assert KEY not in err


def test_cli_serve_flag_key_wins_over_the_environment(monkeypatch, run_dir, capsys):
    import minbert.inference.serve as serve_module

    calls = []
    monkeypatch.setattr(serve_module, "serve", lambda *args: calls.append(args))
    monkeypatch.setenv(API_KEY_ENV, "from-the-environment-0123")
    assert cli_main(["serve", "--checkpoint", str(run_dir), "--api-key", KEY]) == 0
    assert calls[-1][1].api_key == KEY and "--api-key shows the key" in capsys.readouterr().err


# --- exposed: the API key, the concurrency limit, stalled clients, a taken port ---------------------


@pytest.fixture(scope="module")
def keyed_server(predictor):
    """(base URL, the Recording) of a server that wants KEY."""
    recording = Recording(predictor)
    with serving(create_app(recording, LIMITS, api_key=KEY)) as url:
        yield url, recording


# name: (method, path, body, headers); every one is refused with 401 and never reaches the model
UNAUTHORISED = {
    "no Authorization header": ("POST", "/v1/sentiment", {"texts": ["a"]}, {}),
    "the wrong key": ("POST", "/v1/sentiment", {"texts": ["a"]}, {"Authorization": "Bearer " + KEY[:-1] + "x"}),
    "the key with a prefix more": ("POST", "/v1/sentiment", {"texts": ["a"]}, {"Authorization": f"Bearer {KEY}x"}),
    "the key as Basic": ("POST", "/v1/similarity", {"pairs": [["a", "b"]]}, {"Authorization": f"Basic {KEY}"}),
    "Bearer and nothing": ("POST", "/v1/paraphrase", {"pairs": [["a", "b"]]}, {"Authorization": "Bearer "}),
    "the model's description": ("GET", "/v1/model", None, {}),
    "the model card": ("GET", "/v1/card", None, {}),
    "any task": ("POST", "/v1/predict/sst", {"texts": ["a"]}, {}),
    "the OpenAPI schema": ("GET", "/openapi.json", None, {}),
    "no such route": ("GET", "/v1/nope", None, {}),
    "a body over the limit": ("POST", "/v1/sentiment", BIG, {}),  # refused before its body is read
    "a chunked body": ("POST", "/v1/sentiment", "chunks", {}),  # read and dropped first: the client sees the 401
}


@pytest.mark.parametrize("name", UNAUTHORISED)
def test_without_the_api_key_a_401_with_a_json_reason(keyed_server, name):
    url, recording = keyed_server
    method, path, body, headers = UNAUTHORISED[name]
    body = chunks(4096) if body == "chunks" else body
    calls = len(recording.calls)
    status, answer_headers, answer = exchange(url, path, body, method, headers)
    assert status == 401 and answer_headers["www-authenticate"] == "Bearer", (status, answer)
    wrong = "Bearer " + KEY[:-1] in headers.get("Authorization", "") or headers.get("Authorization") == f"Bearer {KEY}x"
    assert answer == {"detail": "the API key is wrong" if wrong else
                      "this server needs an API key: send the header Authorization: Bearer <key>"}  # fmt: skip
    assert len(recording.calls) == calls


def test_with_the_api_key_the_answers_are_the_predictors_and_the_page_and_health_are_open(keyed_server, predictor):
    url, recording = keyed_server
    for scheme in ("Bearer", "bearer"):  # the scheme in any case, as HTTP has it
        status, answer = request(url, "/v1/sentiment", {"texts": TEXTS}, headers={"Authorization": f"{scheme} {KEY}"})
        assert status == 200 and answer == {"results": as_served("sst", predictor.predict("sst", TEXTS))}
    status, model = request(url, "/v1/model", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200 and KEY not in json.dumps(model)  # the key is no limit: never shown
    assert request(url, "/health")[0] == 200
    status, page = request(url, "/")
    assert status == 200 and 'id="key-form"' in page


class Gated(Recording):
    """A Recording whose `predict` waits until `gate` is set: requests that stay in flight."""

    def __init__(self, predictor: Predictor):
        super().__init__(predictor)
        self.gate = threading.Event()

    def predict(self, task, inputs):
        assert self.gate.wait(30), "the test never opened the gate"
        return super().predict(task, inputs)


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_requests_beyond_max_concurrent_get_a_503_with_a_json_reason(predictor):
    gated = Gated(predictor)
    texts = ["held one", "held two", "held three"]
    with serving(create_app(gated, Limits(max_concurrent=3, max_batch=1))) as url:  # one forward each: exact answers
        with ThreadPoolExecutor(len(texts)) as pool:
            held = [pool.submit(request, url, "/v1/sentiment", {"texts": [t]}) for t in texts]
            wait_until(lambda: request(url, "/health")[1]["in_flight"] == 3)  # /health itself is never counted
            started = time.monotonic()
            refused = [exchange(url, path, body) for path, body in [("/v1/similarity", {"pairs": [["a", "b"]]}),
                                                                    ("/v1/model", None)]]  # fmt: skip
            refused_in = time.monotonic() - started
            _, busy = request(url, "/health")
            gated.gate.set()
            answers = [f.result(30) for f in held]
        after = request(url, "/v1/sentiment", {"texts": ["after"]})
        _, idle = request(url, "/health")
    for status, headers, answer in refused:
        assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
        assert answer == {"detail": "the server is busy: 3 requests are in flight, its limit (--max-concurrent); "
                                    "try again shortly"}  # fmt: skip
    assert refused_in < 5  # answered at once, not after the held ones
    assert (busy["in_flight"], busy["refused"]) == (3, 2) and (idle["in_flight"], idle["refused"]) == (0, 2)
    for text, (status, answer) in zip(texts, answers):  # the held ones were answered, as the Predictor does
        assert status == 200 and answer == {"results": as_served("sst", predictor.predict("sst", [text]))}
    assert after[0] == 200 and sorted(t for _, inputs in gated.calls for t in inputs) == sorted([*texts, "after"])


HEAD = b"POST /v1/sentiment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
HALF_HEADS = [b"", b"PO", b"POST /v1/senti", HEAD, HEAD + b"Content-Len"]  # nothing, half a line, half the headers


def closed_after(sockets: dict[socket.socket, float], timeout_s: float) -> dict[socket.socket, tuple[float, bytes]]:
    """For each socket, (seconds from its time in `sockets` until the server closed it, the bytes it sent
    first); sockets still open after `timeout_s` are left out."""
    selector, received, out = selectors.DefaultSelector(), {s: b"" for s in sockets}, {}
    for s in sockets:
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            try:
                data = key.fileobj.recv(65536)
            except ConnectionResetError:
                data = b""
            received[key.fileobj] += data
            if not data:  # the server closed it
                out[key.fileobj] = (time.monotonic() - sockets[key.fileobj], received[key.fileobj])
                selector.unregister(key.fileobj)
    selector.close()
    return out


def test_stalled_clients_are_disconnected_and_the_server_goes_on_answering(predictor):
    limits = Limits(header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=5.0)
    with serving(create_app(predictor, limits)) as url:
        port, stalled = int(url.rsplit(":", 1)[1]), {}
        for i in range(100):  # 100 clients that send part of a request's head, or nothing, and stall
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(HALF_HEADS[i % len(HALF_HEADS)])
            stalled[s] = time.monotonic()
        slow_body = socket.create_connection(("127.0.0.1", port))
        slow_body.sendall(HEAD + b'Content-Length: 40\r\n\r\n{"texts": ')
        stalled[slow_body] = time.monotonic()
        import http.client

        kept = http.client.HTTPConnection("127.0.0.1", port)  # a kept-alive connection: one request, then half a head
        kept.request("GET", "/health")
        assert kept.getresponse().read()
        kept.sock.sendall(b"GET /heal")
        stalled[kept.sock] = time.monotonic()
        started = time.monotonic()
        status, answer = request(url, "/v1/sentiment", {"texts": ["answered while they stall"]})
        answered_in = time.monotonic() - started
        closed = closed_after(stalled, limits.header_timeout_s + 5)
        after = request(url, "/v1/sentiment", {"texts": ["and after"]})
    assert status == 200 and answer["results"][0]["name"] and answered_in < limits.header_timeout_s
    assert len(closed) == len(stalled), f"{len(stalled) - len(closed)} stalled connections were never closed"
    waited = sorted(seconds for seconds, _ in closed.values())
    assert 0.9 <= waited[0] and waited[-1] <= limits.header_timeout_s + 3, waited  # at the deadline, not before
    assert all(data == b"" for s, (_, data) in closed.items() if s is not slow_body)  # closed without a word
    reply = closed[slow_body][1].decode()
    assert reply.startswith("HTTP/1.1 408 ") and "within 1 s of the request's headers (--body-timeout-s)" in reply
    assert after[0] == 200


def test_a_kept_alive_idle_connection_is_closed_after_keep_alive_s(predictor):
    with serving(create_app(predictor, Limits(keep_alive_s=0.5, header_timeout_s=5.0))) as url:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        conn.request("GET", "/health")
        assert conn.getresponse().read()
        closed = closed_after({conn.sock: time.monotonic()}, 4.0)
    (waited, data), = closed.values()
    assert 0.4 <= waited <= 3 and data == b""


def test_a_taken_port_fails_at_once_before_the_model_loads(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        # a checkpoint that does not exist: had it been read first, the error would be about it
        assert cli_main(["serve", "--checkpoint", str(tmp_path / "missing"), "--port", str(port)]) == 2
        took = time.monotonic() - started
    assert capsys.readouterr().err == (f"minbert: error: 127.0.0.1:{port}: address already in use (another server? "
                                       "pick another --port)\n")  # fmt: skip
    assert took < 5
    with socket.socket() as free:  # and on a free port the same command gets as far as the checkpoint
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert cli_main(["serve", "--checkpoint", str(tmp_path / "missing"), "--port", str(port)]) == 2
    assert "missing: no such checkpoint" in capsys.readouterr().err


def test_python_m_minbert_cli_serve_with_a_key_from_the_environment(run_dir, predictor):
    """`python -m minbert.cli serve` in a child process (this checkout first on its PYTHONPATH): it binds the
    port it says, wants the key, answers as the Predictor, and stops on SIGTERM."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, API_KEY_ENV: KEY, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-m", "minbert.cli", "serve", "--checkpoint", str(run_dir), "--port", "0",
                              "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        line = child.stdout.readline()
        assert "API key required" in line, line
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group()
        wait_until(lambda: _answers(url), 30)
        assert request(url, "/v1/sentiment", {"texts": ["a"]})[0] == 401
        status, answer = request(url, "/v1/sentiment", {"texts": TEXTS}, headers={"Authorization": f"Bearer {KEY}"})
        assert status == 200 and answer == {"results": as_served("sst", predictor.predict("sst", TEXTS))}
    finally:
        child.terminate()
        try:
            rest = child.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            child.kill()
            raise
    assert child.returncode == -signal.SIGTERM and "Traceback" not in rest, rest  # uvicorn stops, then re-raises it


def _answers(url: str) -> bool:
    try:
        return request(url, "/health", timeout=2)[0] == 200
    except OSError:
        return False
