"""`minbert serve`: the Predictor behind a JSON API (FastAPI + uvicorn), with a web page at `/`.

    POST /v1/sentiment   {"texts": ["the movie was a triumph", ...]}
    POST /v1/paraphrase  {"pairs": [["How do I learn Python?", "What is the best way to learn Python?"], ...]}
    POST /v1/similarity  {"pairs": [["A man plays a guitar.", "A person plays music."], ...]}
    POST /v1/predict/{task}  {"texts": [...]} or {"pairs": [...]}: any task of the model (a run's
                         declared tasks too), answered by the task's kind (classification: label,
                         name, probabilities; binary: probability, positive; regression: score)
    GET  /health, GET /v1/model (checkpoint, run config, dev scores, tasks, limits), GET /docs (OpenAPI)
    GET  /v1/card        the facts of the model's card (model_card.card_facts: what `minbert export
                         --format hf` writes into README.md), shown on the page

Concurrent requests are micro-batched: each task has a `MicroBatcher`, whose worker takes the
first waiting request, waits up to `batch_wait_ms` for more (at most `max_batch` inputs in all),
and answers them all with ONE `Predictor.predict` call, run on a single worker thread so that the
event loop keeps accepting requests and no two torch calls overlap. The answer to a request is
its slice of that call's results: the Predictor's numbers for those inputs. Batched with other
inputs, a text may be padded to a longer length than alone, which can move its probabilities in
the last float32 bits (tests/test_serve.py states the tolerance); labels and decisions do not move.

Bad requests get a 4xx with a JSON `{"detail": ...}` and the server goes on: a body over
`max_body_bytes` (413, checked before anything is parsed, chunked bodies counted as they come),
not JSON by Content-Type (415: so another site's page cannot post a form to it either, as a
cross-site JSON post needs a CORS grant it never gives), not UTF-8 (400), not JSON (422), or not
the request's shape: wrong types, missing or unknown fields, an empty list, more than `max_texts` items, a text over
`max_chars` characters (422). With an API key, a request without it gets a 401; beyond
`max_concurrent` requests in flight, a 503; a body slower than `body_timeout_s`, a 408; a request
whose headers take longer than `header_timeout_s` is disconnected (serve_guards.py).
`create_app` builds the app from a Predictor (tests use it as it is); `serve` binds the port, then
loads a checkpoint and runs uvicorn on it, on 127.0.0.1 unless told otherwise.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations, and the
# request models are local to `create_app`.
import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from minbert.config import to_dict
from minbert.inference.io import result_fields
from minbert.inference.model_card import RunRecord, card_facts
from minbert.inference.predictor import Predictions, Predictor
from minbert.inference.serve_guards import (ApiKeyGuard, ConcurrencyLimit, InFlight, RequestGuard, bind_listener,
                                           header_timeout_protocol)
from minbert.inference.serve_limits import Access, Limits
from minbert.tasks.heads import SIMILARITY_SCALE

PAGE = Path(__file__).parent / "static" / "index.html"
ENDPOINTS = {"sst": "/v1/sentiment", "para": "/v1/paraphrase", "sts": "/v1/similarity"}
DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------------------
# Micro-batching


@dataclass
class _Waiting:
    inputs: list
    future: asyncio.Future


class MicroBatcher:
    """One task's queue of waiting requests and the worker that answers them in batches.

    `await batcher(inputs)` -> (results, truncated) for those inputs. The worker (`run`, one
    asyncio task) takes the first waiting request, then others until `max_batch` inputs or until
    `wait_s` has passed since it took the first; a request is never split (one larger than
    `max_batch` goes alone), and one that would overflow the batch waits for the next. Then one
    `predict(task, inputs)` on `executor`; each request gets its slice, or the batch's exception."""

    def __init__(self, task: str, predict: Callable[[str, list], Predictions], executor: ThreadPoolExecutor,
                 max_batch: int, wait_s: float):  # fmt: skip
        self.task, self.predict, self.executor = task, predict, executor
        self.max_batch, self.wait_s = max_batch, wait_s
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self.requests = self.forwards = self.inputs = 0  # counters, shown at /health

    async def __call__(self, inputs: list) -> tuple[list, list[bool]]:
        waiting = _Waiting(inputs, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(waiting)
        self.requests += 1
        return await waiting.future

    async def run(self) -> None:
        loop, held = asyncio.get_running_loop(), None
        while True:
            first, held = held or await self.queue.get(), None
            batch, size, deadline = [first], len(first.inputs), loop.time() + self.wait_s
            while size < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    if deadline <= loop.time():
                        break
                    try:
                        nxt = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                    except TimeoutError:
                        break
                if size + len(nxt.inputs) > self.max_batch:
                    held = nxt
                    break
                batch.append(nxt)
                size += len(nxt.inputs)
            batch = [w for w in batch if not w.future.done()]  # a client that went away cancels its future
            if batch:
                await self._answer(batch)

    async def _answer(self, batch: list[_Waiting]) -> None:
        inputs = [x for w in batch for x in w.inputs]
        self.forwards, self.inputs = self.forwards + 1, self.inputs + len(inputs)
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, self.task, inputs)
        except Exception as e:  # noqa: BLE001 - every waiting request gets it (a 500), the worker goes on
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(e)
            return
        start = 0
        for w in batch:
            end = start + len(w.inputs)
            if not w.future.done():
                w.future.set_result((out.results[start:end], out.truncated[start:end]))
            start = end

    def stats(self) -> dict:
        return {"requests": self.requests, "forwards": self.forwards, "inputs": self.inputs}


# ---------------------------------------------------------------------------------------
# Requests and answers


def request_models(limits: Limits) -> tuple[type[BaseModel], type[BaseModel]]:
    """The two request bodies, with `limits` in their schema: {"texts": [...]}, {"pairs": [[a, b], ...]}."""
    Text = Annotated[str, Field(max_length=limits.max_chars)]  # pydantic also refuses a lone surrogate ("\ud800")
    items = {"min_length": 1, "max_length": limits.max_texts}

    class TextsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[Text] = Field(description="texts to classify", examples=[["the movie was a triumph"]], **items)

    pair = ["A man plays a guitar.", "A person plays music."]

    class PairsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        pairs: list[tuple[Text, Text]] = Field(description="pairs of texts", examples=[[pair]], **items)

    return TextsRequest, PairsRequest


def predict_request_model(limits: Limits) -> type[BaseModel]:
    """The body of POST /v1/predict/{task}: {"texts": [...]} for a single-text task, or
    {"pairs": [[a, b], ...]} for a pair task (which one the task takes is checked per task)."""
    Text = Annotated[str, Field(max_length=limits.max_chars)]
    items = {"min_length": 1, "max_length": limits.max_texts}

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[Text] | None = Field(None, description="a single-text task's inputs", **items)
        pairs: list[tuple[Text, Text]] | None = Field(None, description="a pair task's inputs", **items)

    return PredictRequest


class SentimentResult(BaseModel):
    label: int = Field(description="SST-5 class, 0 (very negative) to 4 (very positive)")
    name: str
    probabilities: list[float] = Field(description="softmax of the five logits, in label order")
    truncated: bool = Field(description="the text was cut to the model's max_length tokens")


class ParaphraseResult(BaseModel):
    probability: float
    is_paraphrase: bool = Field(description="probability above the model's threshold")
    truncated: bool


class SimilarityResult(BaseModel):
    score: float = Field(description=f"STS-B similarity, 0 to {SIMILARITY_SCALE:g}")
    truncated: bool


class KindResult(BaseModel):
    """A result of /v1/predict/{task}, with the fields of the task's kind."""

    label: int | None = Field(None, description="classification: the class")
    name: str | None = Field(None, description="classification: the class's name")
    probabilities: list[float] | None = Field(None, description="classification: softmax of the logits")
    probability: float | None = Field(None, description="binary: sigmoid of the logit")
    positive: bool | None = Field(None, description="binary: probability above the model's threshold")
    score: float | None = Field(None, description="regression: the score, in the task's range")
    truncated: bool


R = TypeVar("R", SentimentResult, ParaphraseResult, SimilarityResult, KindResult)


class Answer(BaseModel, Generic[R]):
    results: list[R]  # in input order


def _as_json(route: str, result: Any, truncated: bool) -> dict:
    """A result as its route answers it: by kind (result_fields) on /v1/predict/{task}; the
    paraphrase route keeps its documented `is_paraphrase` for the binary decision."""
    fields = result_fields(result)
    if route == ENDPOINTS["para"] and "positive" in fields:
        fields = {"probability": fields["probability"], "is_paraphrase": fields["positive"]}
    return fields | {"truncated": truncated}


# ---------------------------------------------------------------------------------------
# The app


def _validation_errors(exc: RequestValidationError) -> list[dict]:
    """FastAPI's errors without the inputs they quote (a long text, or one JSON cannot encode)."""
    out = []
    for e in exc.errors():
        item = {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        if e.get("type") == "json_invalid" and "error" in e.get("ctx", {}):
            item["msg"] = f"not valid JSON: {e['ctx']['error']} (at character {item['loc'][-1]})"
        out.append(item)
    return out


def create_app(predictor: Predictor, limits: Limits = DEFAULT_LIMITS, api_key: str | None = None) -> FastAPI:
    """The API and page for `predictor`, with `limits`; with `api_key`, every route but the page
    and /health wants it. Its batchers run while the app runs (uvicorn starts and stops them
    through the app's lifespan); `uvicorn_config` gives the server settings for it."""
    batchers: dict[str, MicroBatcher] = {}
    in_flight = InFlight(limits.max_concurrent)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minbert-predict")  # torch calls never overlap
        predict = returning_freed_memory(predictor.predict)
        batchers.update({task: MicroBatcher(task, predict, executor, limits.max_batch, limits.batch_wait_ms / 1000)
                         for task in predictor.tasks})  # fmt: skip
        workers = [asyncio.create_task(b.run(), name=f"batcher-{t}") for t, b in batchers.items()]
        try:
            yield
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="minbert", version="1", lifespan=lifespan,
                  description=f"The tasks {', '.join(predictor.tasks)} from one fine-tuned BERT "
                              "(GET /v1/model describes it).")  # fmt: skip
    app.state.limits = limits
    app.add_middleware(RequestGuard, limits=limits)
    if api_key is not None:
        app.add_middleware(ApiKeyGuard, key=api_key, limits=limits)
    app.add_middleware(ConcurrencyLimit, in_flight=in_flight, limits=limits)  # added last: the outermost

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc)}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:  # a bug of ours, not a bad request
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    async def answer(task: str, inputs: list, route: str) -> dict:
        known_task(predictor, task)  # a model without the seed's tasks has no answer at their routes
        results, truncated = await batchers[task](inputs)
        return {"results": [_as_json(route, r, t) for r, t in zip(results, truncated)]}

    add_task_routes(app, predictor, limits, answer)

    @app.get("/health", summary="Up, with request and forward counts per task, and requests in flight")
    async def health() -> dict:
        return {"status": "ok", "tasks": {t: b.stats() for t, b in batchers.items()}, **in_flight.stats()}

    @app.get("/v1/model", summary="The checkpoint, its run config and dev scores, the tasks and the limits")
    async def model() -> dict:
        return describe(predictor, limits)

    @app.get("/v1/card", summary="The model card's facts: dev scores, training config, data, usage, limitations")
    async def card() -> dict:
        return card_facts(run_record(predictor))

    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    return app


def returning_freed_memory(predict: Callable[[str, list], Predictions]) -> Callable[[str, list], Predictions]:
    """`predict`, then glibc's malloc_trim(0): the memory freed by the forward goes back to the system.

    Without it the server's resident memory grew with the shapes it met: glibc raises its mmap
    threshold at the first large frees, so later tensors come from the heap, whose freed pages it
    keeps. Batches of ever-changing sizes and lengths then grew a MiniLM server from 428 MB to 891
    MB in 90 s of benchmarks/serve_soak.py (valid requests only), with no object kept; with the trim
    it stays within a few MB (docs/RESULTS.md). Where the C library is not glibc, `predict` as it is."""
    trim = _malloc_trim()
    if trim is None:
        return predict

    def predict_and_trim(task: str, inputs: list) -> Predictions:
        try:
            return predict(task, inputs)
        finally:
            trim(0)

    return predict_and_trim


def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's, in this process's C library
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def known_task(predictor: Predictor, task: str):
    """The spec of one of the model's tasks; a 404 naming its tasks for any other name (a
    train-only task such as sst_phrases included: the model answers through its owner)."""
    if task not in predictor.tasks:
        raise StarletteHTTPException(404, f"this model has no task {task!r}; its tasks: {list(predictor.tasks)}")
    return predictor.tasks[task]


def add_task_routes(app: FastAPI, predictor: Predictor, limits: Limits, answer: Callable) -> None:
    """The question routes: the seed's three named ones, and /v1/predict/{task} for every task of
    the model; `answer(task, inputs, route)` batches and formats (create_app's)."""
    TextsRequest, PairsRequest = request_models(limits)
    PredictRequest = predict_request_model(limits)

    @app.post("/v1/sentiment", response_model=Answer[SentimentResult], summary="SST-5 sentiment of each text")
    async def sentiment(body: TextsRequest) -> dict:
        return await answer("sst", body.texts, ENDPOINTS["sst"])

    @app.post("/v1/paraphrase", response_model=Answer[ParaphraseResult], summary="Are the two questions paraphrases?")
    async def paraphrase(body: PairsRequest) -> dict:
        return await answer("para", [tuple(p) for p in body.pairs], ENDPOINTS["para"])

    @app.post("/v1/similarity", response_model=Answer[SimilarityResult], summary="STS-B similarity of each pair")
    async def similarity(body: PairsRequest) -> dict:
        return await answer("sts", [tuple(p) for p in body.pairs], ENDPOINTS["sts"])

    @app.post("/v1/predict/{task}", response_model=Answer[KindResult], response_model_exclude_none=True,
              summary="Any task of the model: texts or pairs, as the task takes them")  # fmt: skip
    async def predict(task: str, body: PredictRequest) -> dict:
        spec = known_task(predictor, task)
        given, wanted = ("pairs" if body.pairs is not None else "texts"), ("pairs" if spec.is_pair else "texts")
        if (body.pairs is None) == (body.texts is None) or given != wanted:
            raise StarletteHTTPException(422, f"task {task!r} takes {wanted!r}: send {{{wanted!r}: [...]}} and nothing else")
        inputs = [tuple(p) for p in body.pairs] if spec.is_pair else body.texts
        return await answer(task, inputs, f"/v1/predict/{task}")


def describe_task(predictor: Predictor, task: str) -> dict:
    """One task as GET /v1/model lists it: its kind, input, what its answers mean, its routes."""
    spec = predictor.tasks[task]
    about = {"kind": spec.kind, "input": "pairs" if spec.is_pair else "texts", "columns": list(spec.text_columns)}
    if spec.kind == "classification":
        about["labels"] = list(spec.class_names)
    elif spec.kind == "binary":
        about["threshold"] = predictor.threshold
    else:
        about["scale"] = list(spec.value_range)
    seed_route = ENDPOINTS.get(task) if spec.is_builtin else None
    return {"endpoint": seed_route or f"/v1/predict/{task}", "predict_endpoint": f"/v1/predict/{task}", **about}


def describe(predictor: Predictor, limits: Limits) -> dict:
    """What GET /v1/model answers."""
    return {
        "checkpoint": predictor.source or None,
        "backend": predictor.backend_name,
        "config": to_dict(predictor.run_config) if predictor.run_config else None,
        "dev": predictor.dev_scores,
        "max_length": predictor.model_cfg.max_length,
        "tasks": {task: describe_task(predictor, task) for task in predictor.tasks},
        "paraphrase_threshold": predictor.threshold,
        "limits": dataclasses.asdict(limits),
    }


def run_record(predictor: Predictor) -> RunRecord:
    """What the Predictor's files said about its run; for one built by hand, what it holds."""
    return predictor.record or RunRecord(predictor.run_config, predictor.dev_scores, None, None, predictor.source)


def uvicorn_config(app: FastAPI) -> "uvicorn.Config":
    """uvicorn's settings for an app of `create_app`, from its limits: the h11 protocol with the
    header deadline, the keep-alive timeout; no WebSocket, warnings only in the log."""
    import uvicorn

    limits: Limits = app.state.limits
    return uvicorn.Config(app, http=header_timeout_protocol(limits.header_timeout_s), ws="none",
                          timeout_keep_alive=limits.keep_alive_s, log_level="warning")  # fmt: skip


def serve(checkpoint: str | Path, access: Access = Access(), limits: Limits = DEFAULT_LIMITS, backend: str = "torch",
          overrides: list[str] = (), threads: int | None = None, precision: str = "auto") -> None:  # fmt: skip
    """Bind `access`'s address, then load `checkpoint` (a run directory, checkpoint file or export)
    and serve it there until Ctrl-C. The port is taken first, so that a taken one fails in a
    moment rather than after the model has loaded. `threads`: torch's intra-op threads (default:
    torch's choice; the CLI passes the cores this process may use, or --threads)."""
    import torch
    import uvicorn

    sock = bind_listener(access.host, access.port)
    try:
        if threads:
            torch.set_num_threads(threads)  # the forwards' thread sees it too
        predictor = Predictor.load(checkpoint, backend, overrides=list(overrides), precision=precision)
        auth = "API key required (Authorization: Bearer)" if access.api_key else "no API key"
        print(f"minbert: serving {predictor!r} on http://{access.host}:{sock.getsockname()[1]}/ (API docs at /docs; "
              f"{auth}); batches of up to {limits.max_batch} inputs, {limits.batch_wait_ms:g} ms wait; at most "
              f"{limits.max_concurrent} requests in flight; {torch.get_num_threads()} torch threads",
              flush=True)  # fmt: skip
        app = create_app(predictor, limits, access.api_key)
        uvicorn.Server(uvicorn_config(app)).run(sockets=[sock])
    finally:
        sock.close()
