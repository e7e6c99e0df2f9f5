"""Shared fixtures: the shared data directory, a tiny random BERT checkpoint, a small data slice,
tiny trained runs; a server in this process and a loopback HTTP client (the serve tests)."""

from __future__ import annotations

import contextlib
import csv
import http.client
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch

from minbert.checkpoint import default_checkpoint_dir
from minbert.tasks.data import default_data_dir

DATA_FILES = [
    "ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv",
    "quora-train.csv", "quora-dev.csv", "quora-test-student.csv",
    "sts-train.csv", "sts-dev.csv", "sts-test-student.csv",
]  # fmt: skip


# "auto" precision means fp32 in the tests and in the processes they start, on every CPU: the tests
# that compare numbers exactly (golden runs, one step's gradients, exports) compare fp32 arithmetic,
# which is the same on a CPU with native bf16 and one without. The bf16 tests ask for bf16 by name
# and skip where the CPU has no native bf16 (tests/test_precision.py).
os.environ["MINBERT_AUTO_PRECISION"] = "fp32"

# torch's thread count in tests: OMP_NUM_THREADS where set (to try 1 and 2), else 1 rather
# than the machine's core count, on which the rounding of parallel reductions depends.
THREADS = torch.get_num_threads() if "OMP_NUM_THREADS" in os.environ else 1


@pytest.fixture(autouse=True)
def thread_count():
    """Every test starts with THREADS threads, whatever an earlier test's train() set
    (train.threads sets the count for the whole process)."""
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = default_data_dir()
    if found is None:
        pytest.fail("../shared/data not found: the tests read the shared data files")
    return found


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    return default_checkpoint_dir()


def make_hf_checkpoint(path: Path, vocab_file: Path, **overrides) -> Path:
    """A random-initialised Hugging Face BertModel saved as a checkpoint directory."""
    from transformers import BertConfig as HFConfig
    from transformers import BertModel as HFBert

    torch.manual_seed(0)
    n_vocab = sum(1 for _ in vocab_file.open(encoding="utf-8"))
    settings = dict(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    settings.update(overrides)
    model = HFBert(HFConfig(**settings))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    shutil.copy(vocab_file, path / "vocab.txt")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, embedded_dir) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("tiny_bert"), embedded_dir / "vocab.txt")


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory, data_dir) -> Path:
    """The first 48 rows of each shared file: the real formats, a size that trains in seconds."""
    out = tmp_path_factory.mktemp("small_data")
    for name in DATA_FILES:
        lines = (data_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (out / name).write_text("".join(lines[:49]), encoding="utf-8")
    trees = (data_dir / "sst-trees-train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "sst-trees-train.txt").write_text("".join(trees[:48]), encoding="utf-8")
    return out


def read_csv_ids(path: Path) -> list[str]:
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        return [row[header.index("id")] for row in reader]


def check_prediction_files(out: Path, data_dir: Path) -> None:
    """The six `{task}-{split}-output.csv` files: `id,prediction`, one row per input row of the
    data file in input order, each prediction a valid value for its task."""
    for task, source in [("sst", "ids-sst"), ("para", "quora"), ("sts", "sts")]:
        for split, suffix in [("dev", "dev"), ("test", "test-student")]:
            with open(out / f"{task}-{split}-output.csv", newline="") as f:
                rows = list(csv.reader(f))
            assert rows[0] == ["id", "prediction"]
            assert [r[0] for r in rows[1:]] == read_csv_ids(data_dir / f"{source}-{suffix}.csv")
            values = [r[1] for r in rows[1:]]
            if task == "sst":
                assert set(values) <= {"0", "1", "2", "3", "4"}
            elif task == "para":
                assert set(values) <= {"0", "1"}
            else:
                assert all(0.0 <= float(v) <= 5.0 for v in values)


# Tiny trained runs for the inference tests: the two ways a pair reaches the heads.
TINY_RUN_VARIANTS = {
    # max_length 40: some dev pairs are truncated, so the dev checks cover truncation too
    "cross": ["model.pair_encoding=cross", "model.pooling=mean", "model.max_length=40"],
    "siamese": ["model.pair_encoding=siamese", "model.pooling=cls", "model.similarity_head=cosine"],
}


def train_tiny_run(out: Path, tiny_checkpoint: Path, small_data_dir: Path, extra: list[str]) -> Path:
    """A one-epoch run of the tiny checkpoint on the small data into `out`, with `extra` overrides."""
    from minbert.config import load_config
    from minbert.training import TrainOptions, train

    cfg = load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={out.parent / 'cache'}",
        "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1", "train.phases=[{epochs: 1, lr: 1e-3}]",
        *extra])  # fmt: skip
    train(cfg, out, TrainOptions(progress=False))
    return out


@pytest.fixture(scope="session")
def tiny_runs(tiny_checkpoint, small_data_dir, tmp_path_factory) -> dict[str, Path]:
    """{variant: run directory} of one-epoch runs on the small data: cross-encoded pairs with mean
    pooling, and siamese pairs with the pooler's [CLS] and a cosine STS head."""
    return {name: train_tiny_run(tmp_path_factory.mktemp(f"run_{name}") / "run", tiny_checkpoint, small_data_dir, extra)
            for name, extra in TINY_RUN_VARIANTS.items()}  # fmt: skip


@pytest.fixture(scope="session")
def four_task_run(tiny_checkpoint, small_data_dir, data_dir, tmp_path_factory) -> Path:
    """A one-epoch tiny run of the seed's tasks and CFIMDB (declared in YAML only)."""
    data = tmp_path_factory.mktemp("four_data")
    for f in small_data_dir.iterdir():
        shutil.copy(f, data / f.name)
    for name in ("ids-cfimdb-train.csv", "ids-cfimdb-dev.csv", "ids-cfimdb-test-student.csv"):
        lines = (data_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (data / name).write_text("".join(lines[:25]), encoding="utf-8")
    from minbert.config import load_config
    from minbert.training import TrainOptions, train

    cfimdb = Path(__file__).resolve().parent.parent / "minbert" / "configs" / "tasks" / "cfimdb.yaml"
    out = tmp_path_factory.mktemp("four") / "run"
    cfg = load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={data}", "train.batch_size=8", "train.eval_batch_size=16",
        "train.threads=1", f"tasks=[sst, para, sts, {cfimdb}]", "model.pair_encoding=cross", "model.pooling=mean",
        "train.phases=[{tasks: [sst, para, sts, cfimdb], epochs: 1, lr: 1e-3}]"])  # fmt: skip
    train(cfg, out, TrainOptions(progress=False))
    return out


# --- `minbert serve` in this process (tests/inference/test_serve.py, tests/inference/test_serve_page.py) ---------


def pytest_addoption(parser):
    group = parser.getgroup("minbert serve page")
    group.addoption("--serve-checkpoint", help="tests/inference/test_serve_page.py: serve this run (default: a tiny trained run)")
    group.addoption("--screenshots-to", help="tests/inference/test_serve_page.py: also copy its screenshots to this directory "
                                             "(serve-phone.png, serve-desktop.png)")  # fmt: skip


@contextlib.contextmanager
def serving(app, timeout: float = 30.0) -> Iterator[str]:
    """`app` (of `create_app`) under uvicorn on a free 127.0.0.1 port, in a background thread, with
    the settings `minbert serve` uses (`uvicorn_config`: the header deadline, the keep-alive
    timeout); yields its base URL and stops the server (`should_exit`) on the way out."""
    import uvicorn

    from minbert.inference.serve import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound here, so no other process can take the port in between
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start within {timeout} s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def request(url: str, path: str, body: Any = None, method: str | None = None, headers: dict | None = None,
            timeout: float = 30.0) -> tuple[int, Any]:  # fmt: skip
    """One HTTP request to a loopback server: (status, its JSON answer, or its text where not JSON).
    `body`: bytes as they are, an iterator of bytes chunked, anything else as JSON."""
    status, _, answer = exchange(url, path, body, method, headers, timeout)
    return status, answer


def exchange(url: str, path: str, body: Any = None, method: str | None = None, headers: dict | None = None,
             timeout: float = 30.0) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    """`request`, with the answer's headers too (names in lower case): (status, headers, answer)."""
    address = urlsplit(url)
    assert address.hostname == "127.0.0.1", "the tests talk to loopback only"
    headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes) and not hasattr(body, "__next__"):
        body = json.dumps(body).encode()
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
    try:
        conn.request(method or ("GET" if body is None else "POST"), path, body, headers,
                     encode_chunked=hasattr(body, "__next__"))  # fmt: skip
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    answer_headers = {name.lower(): value for name, value in response.getheaders()}
    try:
        return response.status, answer_headers, json.loads(data)
    except ValueError:
        return response.status, answer_headers, data.decode("utf-8", "replace")
