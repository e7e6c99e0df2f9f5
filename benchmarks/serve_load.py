"""`minbert serve` under load: requests/s and latency with micro-batching and with one request
per forward, measured in the same run.

What: --clients concurrent clients (threads, one keep-alive loopback connection each) POST
/v1/sentiment with one SST dev sentence per request (the dev file's sentences in turn), each
sending its next request when the answer to the last has come (a closed loop), --seconds in all
against each of two servers: one that micro-batches (--max-batch, --batch-wait-ms) and one that
runs one request per forward (`minbert serve --no-batching`). Both run at once and take turns,
--rounds rounds of --seconds / --rounds each, so that a change in the machine's other load
falls on both. First an untimed warm-up of 2 requests per client on each. Printed per server:
requests/s, p50/p95/p99 latency, errors (any answer but 200, or a failed connection: must be
0), mean inputs per forward (from /health); then the speed-up of batching in requests/s.
Servers: `python -m minbert.cli serve` in child processes on 127.0.0.1 and free ports, so that
the clients' Python does not share the servers' interpreter; stopped at the end.
Model: --checkpoint, a run directory (or checkpoint file, or export); by default the embedded
all-MiniLM-L6-v2 with freshly initialised heads under minbert/configs/main.yaml's model section,
saved as a temporary run: the main job's shapes and costs, not its predictions. The output says
which was measured.
Bounds: at most 64 clients and 120 s per server; every request has a 60 s timeout; loopback only.
Run (from the repository root):
    nice -n 10 python benchmarks/serve_load.py [--checkpoint RUN] [--clients 8] [--seconds 10]
        [--rounds 5] [--max-batch 64] [--batch-wait-ms 5] [--threads N] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only
MAX_CLIENTS, MAX_SECONDS, REQUEST_TIMEOUT_S, START_TIMEOUT_S = 64, 120, 60, 300


def fresh_heads_run(directory: Path) -> str:
    """The embedded MiniLM with freshly initialised heads (main.yaml's model), saved as a run."""
    from minbert.config import load_config, to_dict
    from minbert.configs import resolve_config
    from minbert.run_files import BEST, Checkpoint, save_checkpoint
    from minbert.runs import build_model
    from minbert.training.state import set_seed

    cfg = load_config(resolve_config("main"))
    set_seed(cfg.train.seed)
    model, _ = build_model(cfg)
    save_checkpoint(Checkpoint(model.state_dict(), to_dict(cfg), vars(model.bert.config)), directory / BEST)
    return str(directory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def call(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, json.dumps(body).encode() if body is not None else None, headers)
    response = conn.getresponse()
    return response.status, response.read()


class Server:
    """`minbert serve` in a child process, up (GET /health answers) on entry, stopped on exit."""

    def __init__(self, checkpoint: str, flags: list[str]):
        self.port = free_port()
        self.command = [sys.executable, "-m", "minbert.cli", "serve", "--checkpoint", checkpoint, "--host", HOST,
                        "--port", str(self.port), *flags]  # fmt: skip

    def __enter__(self) -> Server:  # noqa: PYI034 - a script's class, never subclassed
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.log.read().decode()}")
            try:
                if self.get("/health")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.25)
        self.__exit__()
        raise RuntimeError(f"the server did not answer /health within {START_TIMEOUT_S} s")

    def get(self, path: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            status, data = call(conn, "GET", path)
        finally:
            conn.close()
        return status, json.loads(data)

    def __exit__(self, *exc) -> None:
        self.process.terminate()  # uvicorn shuts down on SIGTERM
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def load(port: int, sentences: list[str], clients: int, seconds: float) -> dict:
    """The closed loop: `clients` threads for `seconds`. Latencies (s) of the answered requests, errors."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        conn, n = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S), 0
        while time.monotonic() < deadline:
            text = sentences[(k + n * clients) % len(sentences)]
            n += 1
            start = time.perf_counter()
            try:
                status, _ = call(conn, "POST", "/v1/sentiment", {"texts": [text]})
            except (OSError, http.client.HTTPException):
                status = None
                conn.close()  # a fresh connection for the next request
            if status == 200:
                latencies[k].append(time.perf_counter() - start)
            else:
                errors[k] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + REQUEST_TIMEOUT_S + 5)
    wall = time.perf_counter() - started
    return {"latencies": [x for per in latencies for x in per], "errors": sum(errors), "wall": wall}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))]


def measure(servers: dict[str, Server], sentences: list[str], args) -> dict[str, dict]:
    """Warm-up, then --rounds turns of --seconds / --rounds on each server: {name: totals}."""
    totals = {name: {"latencies": [], "errors": 0, "wall": 0.0, "forwards": 0, "inputs": 0} for name in servers}
    for server in servers.values():
        for k in range(2 * args.clients):  # untimed warm-up, one after another
            conn = http.client.HTTPConnection(HOST, server.port, timeout=REQUEST_TIMEOUT_S)
            call(conn, "POST", "/v1/sentiment", {"texts": [sentences[k % len(sentences)]]})
            conn.close()
    for _ in range(args.rounds):
        for name, server in servers.items():
            before = server.get("/health")[1]["tasks"]["sst"]
            result = load(server.port, sentences, args.clients, args.seconds / args.rounds)
            after = server.get("/health")[1]["tasks"]["sst"]
            total = totals[name]
            total["latencies"] += result["latencies"]
            total["errors"] += result["errors"]
            total["wall"] += result["wall"]
            total["forwards"] += after["forwards"] - before["forwards"]
            total["inputs"] += after["inputs"] - before["inputs"]
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="run directory, checkpoint file or export (default: MiniLM, fresh heads)")
    parser.add_argument("--clients", type=int, default=8, help=f"concurrent clients (at most {MAX_CLIENTS})")
    parser.add_argument("--seconds", type=float, default=10.0, help=f"timed seconds per server (at most {MAX_SECONDS})")
    parser.add_argument("--rounds", type=int, default=5, help="turns each server takes (--seconds split between them)")
    parser.add_argument("--max-batch", type=int, default=64, help="the batching server's --max-batch")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="the batching server's --batch-wait-ms")
    parser.add_argument("--threads", type=int, help="the servers' torch threads (default: torch's, one per core)")
    parser.add_argument("--data-dir", help="data directory (default: ../shared/data, found)")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS or not 1 <= args.rounds <= 100:
        parser.error(f"--clients must be 1-{MAX_CLIENTS}, --seconds in (0, {MAX_SECONDS}], --rounds 1-100")

    from minbert.tasks.data import resolve_data_dir
    from minbert.tasks.spec import BUILTIN as TASKS

    sentences = [e.texts[0] for e in TASKS["sst"].read(resolve_data_dir(args.data_dir), "dev").examples]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            checkpoint, described = args.checkpoint, f"trained run {args.checkpoint}"
        else:
            checkpoint = fresh_heads_run(Path(tmp))
            described = "embedded all-MiniLM-L6-v2 + freshly initialised heads (main.yaml's model), a temporary run"
        threads = ["--threads", str(args.threads)] if args.threads else []
        flags = {"micro-batching": ["--max-batch", str(args.max_batch), "--batch-wait-ms", f"{args.batch_wait_ms:g}",
                                    *threads],
                 "one request per forward": ["--no-batching", *threads]}  # fmt: skip
        with contextlib.ExitStack() as stack:
            servers = {name: stack.enter_context(Server(checkpoint, f)) for name, f in flags.items()}
            results = measure(servers, sentences, args)

    print(f"model: {described}")
    print(f"load: {args.clients} clients x {args.seconds:g} s per server ({args.rounds} alternating rounds), closed "
          f"loop, POST /v1/sentiment with 1 SST dev sentence each ({len(sentences):,} sentences in turn), "
          f"loopback {HOST}")  # fmt: skip
    print(f"CPU: {os.cpu_count()} cores seen, shared by server and clients; server torch threads: "
          f"{args.threads or 'default'}; 1-minute load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (above the core count, other processes "
          "shared the CPU)")  # fmt: skip
    print("| server | flags | requests | requests/s | p50 ms | p95 ms | p99 ms | errors | inputs per forward |")
    print("|---|---|---|---|---|---|---|---|---|")
    rates = {}
    for name, r in results.items():
        lat, n = sorted(r["latencies"]), len(r["latencies"])
        rates[name] = n / r["wall"]
        print(f"| {name} | `{' '.join(flags[name])}` | {n:,} | {rates[name]:.1f} | {1000 * percentile(lat, 50):.0f} | "
              f"{1000 * percentile(lat, 95):.0f} | {1000 * percentile(lat, 99):.0f} | {r['errors']} | "
              f"{r['inputs'] / max(1, r['forwards']):.1f} |")  # fmt: skip
    print(f"speed-up of micro-batching (requests/s): {rates['micro-batching'] / rates['one request per forward']:.2f}x")
    if any(r["errors"] for r in results.values()):
        raise SystemExit("errors: some requests were not answered with 200")


if __name__ == "__main__":
    main()
