"""`minbert serve` soaked: minutes of mixed good and bad requests from many clients, nothing lost.

What: one `minbert serve` child process (serve_load.Server: `python -m minbert.cli serve` on a free
127.0.0.1 port) with an API key (MINBERT_API_KEY) and --max-concurrent below --clients, so that
the concurrency limit is met; --clients threads, each with a keep-alive connection, send requests
for --minutes, each the next when the last is answered (a closed loop), drawn by weight (KINDS):
- valid (75%): 1-4 dev inputs of a random task (SST, Quora, STS-B dev files, POOL of each, drawn
  once by --seed), at the task's own route or at /v1/predict/{task}; a 503 is retried after its
  Retry-After, so that every valid request is answered in the end;
- malformed JSON, a wrong field, too many texts (422); a body over --max-body-bytes sent chunked
  (413, after the server has read it to its end) or declared by Content-Length with only the
  headers sent (413); a form's Content-Type (415); no key, a wrong key (401); an unknown task (404);
- half-sent: a new connection that sends part of a request's headers and stalls; the server must
  close it within --header-timeout-s (+ HALF_SENT_SLACK_S).
Checks (the exit status is 1 where one fails):
- every valid answer is, input by input, the Predictor's answer for that input alone (loaded in
  this process from the same checkpoint, on --threads threads as the server): floats within
  TOLERANCE (tests/inference/test_serve.py's BATCHED_TOLERANCE: batched beside longer inputs, a
  text is padded further and its float32 numbers may move in their last bits), labels and
  decisions exactly, but where the Predictor's own margin (top two probabilities, or probability
  and threshold) is under 2 x TOLERANCE;
- every other request gets its kind's status (a 503 counts for any kind: the limit at work); no
  5xx but 503, no failed connection;
- the server's resident memory (VmRSS of /proc/PID/status), read after a warm-up that has sent
  every kind and the largest batch of each task, grows by at most --memory-bound-mb (default 50)
  by the end. Why 50 MB: once every tensor shape has been met, a server that keeps nothing per
  request stays flat but for allocator noise (a few MB); a soak of thousands of requests that kept
  even 10 KB each would pass 50 MB, and 50 MB is about a tenth of a MiniLM server's resident size.
Printed: per kind, requests and statuses, p50/p99/max latency; for valid requests, latency from the
first try to the answer (retries included); the server's counters and memory.
Model: --checkpoint, a run directory (or checkpoint file, or export); by default the embedded
all-MiniLM-L6-v2 with freshly initialised heads (serve_load.fresh_heads_run): the main job's shapes
and costs, not its predictions. The output says which was soaked.
Bounds: at most 64 clients and 30 minutes; every request has a 60 s timeout; loopback only.
Run (from the repository root):
    nice -n 10 python benchmarks/serve_soak.py [--checkpoint RUN] [--minutes 2] [--clients 32]
        [--max-concurrent 28] [--header-timeout-s 2] [--threads 1] [--seed 0] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import random
import secrets
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve_load import HOST, REQUEST_TIMEOUT_S, Server, fresh_heads_run, percentile

MAX_CLIENTS, MAX_MINUTES, POOL, HALF_SENT_SLACK_S = 64, 30, 100, 5.0
TOLERANCE = 1e-5  # tests/inference/test_serve.py's BATCHED_TOLERANCE
SEED_ROUTES = {"sst": "/v1/sentiment", "para": "/v1/paraphrase", "sts": "/v1/similarity"}
MAX_BODY_BYTES, MAX_TEXTS = 256 * 1024, 64  # the server's defaults (serve_limits.Limits), which the soak keeps


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------------------------------
# The inputs and the Predictor's answers for each alone


@dataclass
class Expected:
    """POOL dev inputs per task and the Predictor's answer for each alone: (result fields, truncated,
    margin: how far its label or decision is from flipping)."""

    inputs: dict[str, list] = field(default_factory=dict)
    answers: dict[str, list[tuple[dict, bool, float]]] = field(default_factory=dict)
    longest: dict[str, list] = field(default_factory=dict)  # MAX_TEXTS longest dev inputs: the warm-up's batch


def expected_answers(checkpoint: str, data_dir, seed: int) -> Expected:
    from minbert.inference.io import result_fields
    from minbert.inference.predictor import Predictor
    from minbert.tasks.data import resolve_data_dir
    from minbert.tasks.spec import BUILTIN as TASKS

    predictor, rng, out = Predictor.load(checkpoint), random.Random(seed), Expected()
    for task in SEED_ROUTES:
        dev = [e.texts[0] if len(e.texts) == 1 else tuple(e.texts)
               for e in TASKS[task].read(resolve_data_dir(data_dir), "dev").examples]  # fmt: skip
        out.inputs[task] = rng.sample(dev, POOL)
        out.longest[task] = sorted(dev, key=lambda x: -len(str(x)))[:MAX_TEXTS]
        out.answers[task] = []
        for x in out.inputs[task]:
            predictions = predictor.predict(task, [x])
            fields = result_fields(predictions.results[0])
            out.answers[task].append((fields, predictions.truncated[0], margin(fields, predictor.threshold)))
    return out


def margin(fields: dict, threshold: float) -> float:
    if "probabilities" in fields:
        second, first = sorted(fields["probabilities"])[-2:]
        return first - second
    return abs(fields["probability"] - threshold) if "probability" in fields else float("inf")


def floats(value) -> list[float]:
    return list(value) if isinstance(value, list | tuple) else [value]


def differences(expected: list[tuple[dict, bool, float]], served: list[dict]) -> list[str]:
    """Where a served answer is not the Predictor's alone (TOLERANCE for floats), one line each."""
    if len(served) != len(expected):
        return [f"{len(served)} results for {len(expected)} inputs"]
    out = []
    for (fields, truncated, flip_margin), got in zip(expected, served):
        got = {("positive" if k == "is_paraphrase" else k): v for k, v in got.items()}
        if got.pop("truncated", None) != truncated or set(got) != set(fields):
            out.append(f"fields {sorted(got)} (truncated {truncated}) for {sorted(fields)}")
            continue
        for key, want in fields.items():
            have = got[key]
            if isinstance(want, float) or key == "probabilities":
                if len(floats(have)) != len(floats(want)):
                    out.append(f"{key} {have} for {want}")
                    continue
                gap = max(abs(a - b) for a, b in zip(floats(have), floats(want)))
                if gap > TOLERANCE:
                    out.append(f"{key} {have} for {want} (off by {gap:.2g})")
            elif have != want and flip_margin >= 2 * TOLERANCE:
                out.append(f"{key} {have!r} for {want!r}")
    return out


# ---------------------------------------------------------------------------------------
# The clients


@dataclass
class Outcome:
    kind: str
    status: str  # the HTTP status, "closed" (a half-sent request the server dropped), or the error's name
    latency_s: float
    problems: list[str] = field(default_factory=list)
    retries: int = 0


class Soak:
    """What the clients share: the server's port, the key, the inputs and answers; `KINDS` are its
    `kind_*` methods, each one request on a client's connection."""

    KINDS = {"valid": 75, "malformed_json": 3, "wrong_field": 3, "too_many_texts": 3, "oversized_chunked": 2,
             "oversized_declared": 2, "wrong_content_type": 3, "no_key": 3, "wrong_key": 3, "unknown_task": 2,
             "half_sent": 1}  # fmt: skip
    WANTED = {"valid": "200", "malformed_json": "422", "wrong_field": "422", "too_many_texts": "422",
              "oversized_chunked": "413", "oversized_declared": "413", "wrong_content_type": "415", "no_key": "401",
              "wrong_key": "401", "unknown_task": "404", "half_sent": "closed"}  # fmt: skip

    def __init__(self, port: int, key: str, expected: Expected, header_timeout_s: float, deadline: float):
        self.port, self.key, self.expected = port, key, expected
        self.header_timeout_s, self.deadline = header_timeout_s, deadline
        self.auth = {"Authorization": f"Bearer {key}"}

    def send(self, conn, method: str, path: str, body=None, headers: dict | None = None) -> tuple[str, dict]:
        """(status, answer headers); a failed connection is the exception's name (and a fresh connection next)."""
        headers = {"Content-Type": "application/json", **(headers if headers is not None else self.auth)}
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
        try:
            conn.request(method, path, body, headers, encode_chunked=hasattr(body, "__next__"))
            response = conn.getresponse()
            response.read()
            return str(response.status), {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            return type(e).__name__, {}

    def kind_valid(self, conn, rng: random.Random) -> Outcome:
        task = rng.choice(list(SEED_ROUTES))
        picked = [rng.randrange(POOL) for _ in range(rng.randint(1, 4))]
        inputs = [self.expected.inputs[task][i] for i in picked]
        body = {"pairs": [list(x) for x in inputs]} if task != "sst" else {"texts": inputs}
        route = rng.choice([SEED_ROUTES[task], f"/v1/predict/{task}"])
        start, retries = time.perf_counter(), 0
        while True:
            status, data = self._post_json(conn, route, body)
            if status != "503" or time.monotonic() > self.deadline + REQUEST_TIMEOUT_S:
                break
            retries += 1
            time.sleep(float(data.get("retry-after", 1)))
        latency, problems = time.perf_counter() - start, []
        if status == "200":
            wanted = [self.expected.answers[task][i] for i in picked]
            problems = [f"{route} {inputs}: {d}" for d in differences(wanted, data["results"])]
        return Outcome("valid", status, latency, problems, retries)

    def _post_json(self, conn, path: str, body: dict) -> tuple[str, dict]:
        """A POST whose JSON answer is wanted: (status, the answer's JSON with its Retry-After)."""
        headers = {"Content-Type": "application/json", **self.auth}
        try:
            conn.request("POST", path, json.dumps(body).encode(), headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            return str(response.status), answer | {"retry-after": response.getheader("retry-after", "1")}
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            return type(e).__name__, {}

    def kind_malformed_json(self, conn, rng) -> Outcome:
        return self._timed("malformed_json", conn, "POST", "/v1/sentiment", b'{"texts": ["a rather good film",')

    def kind_wrong_field(self, conn, rng) -> Outcome:
        return self._timed("wrong_field", conn, "POST", "/v1/paraphrase", {"pairs": [["a", "b"]], "threshold": 0.9})

    def kind_too_many_texts(self, conn, rng) -> Outcome:
        return self._timed("too_many_texts", conn, "POST", "/v1/sentiment", {"texts": ["fine"] * (MAX_TEXTS + 1)})

    def kind_oversized_chunked(self, conn, rng) -> Outcome:
        chunks = (b"x" * 8192 for _ in range(MAX_BODY_BYTES // 8192 + 8))
        return self._timed("oversized_chunked", conn, "POST", "/v1/sentiment", chunks)

    def kind_wrong_content_type(self, conn, rng) -> Outcome:
        return self._timed("wrong_content_type", conn, "POST", "/v1/sentiment", b"texts=a",
                           {"Content-Type": "application/x-www-form-urlencoded", **self.auth})  # fmt: skip

    def kind_no_key(self, conn, rng) -> Outcome:
        return self._timed("no_key", conn, "POST", "/v1/sentiment", {"texts": ["a"]}, {})

    def kind_wrong_key(self, conn, rng) -> Outcome:
        return self._timed("wrong_key", conn, "GET", "/v1/model", None, {"Authorization": f"Bearer {self.key}0"})

    def kind_unknown_task(self, conn, rng) -> Outcome:
        return self._timed("unknown_task", conn, "POST", "/v1/predict/translate", {"texts": ["a"]})

    def _timed(self, kind: str, conn, method: str, path: str, body=None, headers: dict | None = None) -> Outcome:
        start = time.perf_counter()
        status, _ = self.send(conn, method, path, body, headers)
        return Outcome(kind, status, time.perf_counter() - start)

    def kind_oversized_declared(self, conn, rng) -> Outcome:
        """Headers that declare a body over the limit, and no body: the 413 comes before one is sent."""
        head = (f"POST /v1/sentiment HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {self.key}\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n")  # fmt: skip
        start = time.perf_counter()
        reply = self._raw(head.encode(), REQUEST_TIMEOUT_S)
        status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/1.1 ") else f"no answer: {reply[:40]!r}"
        return Outcome("oversized_declared", status, time.perf_counter() - start)

    def kind_half_sent(self, conn, rng) -> Outcome:
        """Part of a request's headers on a new connection, then silence: the server must hang up."""
        start = time.perf_counter()
        reply = self._raw(b"POST /v1/sentiment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le",
                          self.header_timeout_s + HALF_SENT_SLACK_S)  # fmt: skip
        waited = time.perf_counter() - start
        status = "closed" if reply == b"" and waited <= self.header_timeout_s + HALF_SENT_SLACK_S else "not closed"
        return Outcome("half_sent", status, waited)

    def _raw(self, data: bytes, timeout_s: float) -> bytes:
        """Send `data` on a new connection and read until the server closes it (or `timeout_s`)."""
        with socket.create_connection((HOST, self.port), timeout=timeout_s) as s:
            s.sendall(data)
            received = b""
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while chunk := s.recv(65536):
                    received += chunk
            return received

    def client(self, k: int, seed: int, outcomes: list[Outcome]) -> None:
        """One client's closed loop until the deadline."""
        rng = random.Random(seed * 1000 + k)
        names, weights = list(self.KINDS), list(self.KINDS.values())
        conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
        while time.monotonic() < self.deadline:
            outcomes.append(getattr(self, f"kind_{rng.choices(names, weights)[0]}")(conn, rng))
        conn.close()


# ---------------------------------------------------------------------------------------
# The run


def warm_up(server: Server, soak: Soak, clients: int) -> None:
    """Every kind once, then each task's largest batch (MAX_TEXTS of its longest dev inputs) twice
    and a few valid requests from every client at once: after it, the server has met every shape."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=REQUEST_TIMEOUT_S)
    rng = random.Random(-1)
    for kind in Soak.KINDS:
        if kind != "half_sent":
            getattr(soak, f"kind_{kind}")(conn, rng)
    for task, longest in soak.expected.longest.items():
        body = {"pairs": [list(x) for x in longest]} if task != "sst" else {"texts": longest}
        for _ in range(2):
            status, _ = soak._post_json(conn, SEED_ROUTES[task], body)
            if status != "200":
                raise RuntimeError(f"warm-up: {task}'s largest batch got {status}")
    conn.close()

    def a_few_valid(k: int) -> None:
        own = http.client.HTTPConnection(HOST, server.port, timeout=REQUEST_TIMEOUT_S)
        for _ in range(4):
            soak.kind_valid(own, random.Random(-2 - k))
        own.close()

    threads = [threading.Thread(target=a_few_valid, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run(server: Server, soak: Soak, args) -> tuple[list[Outcome], dict]:
    """The clients until the deadline, the server's memory sampled meanwhile: (outcomes, memory in MB)."""
    outcomes: list[Outcome] = []
    samples, stop = [], threading.Event()

    def sample() -> None:
        while not stop.wait(2.0):
            samples.append((time.monotonic() - started, rss_mb(server.process.pid)))

    start_rss, started = rss_mb(server.process.pid), time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=soak.client, args=(k, args.seed, outcomes)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.minutes * 60 + 3 * REQUEST_TIMEOUT_S)
    stop.set()
    time.sleep(1.0)  # answers written, sockets closed
    end_rss = rss_mb(server.process.pid)
    return outcomes, {"start": start_rss, "end": end_rss, "peak": max([start_rss, end_rss, *(m for _, m in samples)]),
                      "samples": samples}


def report(outcomes: list[Outcome], memory: dict, health: dict, wall_s: float, args, described: str) -> list[str]:
    """Prints the tables; returns the failed checks (none: the soak passed)."""
    by_kind = collections.defaultdict(list)
    for o in outcomes:
        by_kind[o.kind].append(o)
    print(f"model: {described}")
    print(f"load: {args.clients} clients, closed loop, {wall_s:.0f} s; server `--max-concurrent {args.max_concurrent} "
          f"--header-timeout-s {args.header_timeout_s:g} --threads {args.threads}` with an API key, loopback {HOST}; "
          f"CPU: {os.cpu_count()} cores seen, shared by server and clients")  # fmt: skip
    print("| kind | wanted | requests | statuses | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    failures = []
    for kind in Soak.KINDS:
        got = by_kind.get(kind, [])
        statuses = collections.Counter(o.status for o in got)
        latencies = sorted(o.latency_s for o in got)
        shown = ", ".join(f"{s}: {n:,}" for s, n in sorted(statuses.items()))
        print(f"| {kind} | {Soak.WANTED[kind]} | {len(got):,} | {shown} | {1000 * percentile(latencies, 50):.0f} | "
              f"{1000 * percentile(latencies, 99):.0f} | {1000 * max(latencies, default=float('nan')):.0f} |")  # fmt: skip
        wrong = {s: n for s, n in statuses.items() if s not in (Soak.WANTED[kind], "503")}
        if wrong:
            failures.append(f"{kind}: statuses {wrong} (wanted {Soak.WANTED[kind]} or 503)")
    valid = by_kind.get("valid", [])
    problems = [p for o in valid for p in o.problems]
    compared = sum(1 for o in valid if o.status == "200")
    retried = sum(o.retries for o in valid)
    print(f"requests: {len(outcomes):,} ({len(outcomes) / wall_s:.1f}/s); valid answered and compared with the "
          f"Predictor alone: {compared:,}, differing: {len(problems)}; valid requests retried after a 503: "
          f"{sum(1 for o in valid if o.retries)} ({retried} retries)")  # fmt: skip
    per_forward = sum(t["inputs"] for t in health["tasks"].values()) / max(1, sum(t["forwards"] for t in health["tasks"].values()))
    print(f"server: refused with 503 (its count): {health['refused']:,}; in flight at the end: {health['in_flight']}; "
          f"inputs per forward: {per_forward:.1f}")  # fmt: skip
    growth = memory["end"] - memory["start"]
    print(f"server memory (VmRSS): {memory['start']:.1f} MB after warm-up, {memory['end']:.1f} MB at the end "
          f"({growth:+.1f} MB), peak {memory['peak']:.1f} MB; bound: +{args.memory_bound_mb:g} MB")  # fmt: skip
    every = max(1, len(memory["samples"]) // 8)
    print("  over time: " + ", ".join(f"{t:.0f} s {m:.0f} MB" for t, m in memory["samples"][::every]))
    failures += [f"a valid answer differs: {p}" for p in problems[:10]]
    if not compared:
        failures.append("no valid request was answered")
    if growth > args.memory_bound_mb:
        failures.append(f"memory grew by {growth:.1f} MB, over the bound of {args.memory_bound_mb:g} MB")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="run directory, checkpoint file or export (default: MiniLM, fresh heads)")
    parser.add_argument("--minutes", type=float, default=2.0, help=f"how long the load runs (at most {MAX_MINUTES})")
    parser.add_argument("--clients", type=int, default=32, help=f"concurrent clients (at most {MAX_CLIENTS})")
    parser.add_argument("--max-concurrent", type=int, default=28, help="the server's --max-concurrent")
    parser.add_argument("--header-timeout-s", type=float, default=2.0, help="the server's --header-timeout-s")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the server's and this process's")
    parser.add_argument("--memory-bound-mb", type=float, default=50.0, help="allowed growth of the server's VmRSS")
    parser.add_argument("--seed", type=int, default=0, help="the inputs drawn and each client's choices")
    parser.add_argument("--data-dir", help="data directory (default: ../shared/data, found)")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--clients must be 1-{MAX_CLIENTS}, --minutes in (0, {MAX_MINUTES}]")

    import torch

    torch.set_num_threads(args.threads)
    key = secrets.token_urlsafe(24)
    os.environ["MINBERT_API_KEY"] = key  # the server's key, from its environment as recommended
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            checkpoint, described = args.checkpoint, f"trained run {args.checkpoint}"
        else:
            checkpoint = fresh_heads_run(Path(tmp))
            described = "embedded all-MiniLM-L6-v2 + freshly initialised heads (main.yaml's model), a temporary run"
        expected = expected_answers(checkpoint, args.data_dir, args.seed)
        flags = ["--max-concurrent", str(args.max_concurrent), "--header-timeout-s", f"{args.header_timeout_s:g}",
                 "--threads", str(args.threads)]  # fmt: skip
        with Server(checkpoint, flags) as server:
            warm = Soak(server.port, key, expected, args.header_timeout_s, deadline=time.monotonic())
            warm_up(server, warm, args.clients)
            started = time.monotonic()
            soak = Soak(server.port, key, expected, args.header_timeout_s, deadline=started + 60 * args.minutes)
            outcomes, memory = run(server, soak, args)
            wall_s = time.monotonic() - started
            health = server.get("/health")[1]
    failures = report(outcomes, memory, health, wall_s, args, described)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("passed: every valid answer was the Predictor's, every other request got its status, memory within bound")


if __name__ == "__main__":
    main()
