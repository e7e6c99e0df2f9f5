"""Predictor throughput, PyTorch vs ONNX (onnxruntime), measured in the same run.

What: `Predictor.predict` end to end (tokenisation, length-sorted batches, the model, the
results in input order) on the SST dev sentences (1,101, in sentences/s), the Quora dev pairs
(5,000) and the STS dev pairs (863, in pairs/s), once with the PyTorch backend and once with
the ONNX backend, on the same model, threads and batch size.
Model: --model-dir, a run directory, a checkpoint file or an export (its ONNX graphs are
written to a temporary directory first where it has none); by default the embedded
all-MiniLM-L6-v2 with freshly initialised heads under minbert/configs/main.yaml's model section
(the main job's model: cross-encoded pairs, mean pooling), which has the trained model's shapes
and costs, not its predictions. The output says which was measured.
How: one process; torch and onnxruntime both get --threads intra-op threads; each backend first
predicts one untimed batch of each task; then, --repeats times, task by task, torch and onnx run
one after the other, and the best time of each is kept (on a shared CPU, interleaving and the
best of several runs keep other processes' load out of the comparison as far as they can).
Their predictions are compared as a check that both did the same work.
Run (from the repository root):
    nice -n 10 python benchmarks/predictor_throughput.py [--model-dir DIR] [--threads 2] [--limit N]
        [--batch-size N] [--repeats 1] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from minbert.config import load_config
from minbert.configs import resolve_config
from minbert.data import resolve_data_dir
from minbert.inference.export import agreement, is_export, load_model, read_manifest, read_tokenizer, write_export
from minbert.inference.onnx_graphs import OnnxBackend, graph_path
from minbert.inference.predictor import Predictor, TorchBackend, split_inputs
from minbert.train import build_model, load_trained, set_seed

UNITS = {"sst": "sentences/s", "para": "pairs/s", "sts": "pairs/s"}
NAMES = {"sst": "SST dev sentences", "para": "Quora dev pairs", "sts": "STS dev pairs"}


def load(model_dir: str | None):
    """(model, tokenizer, run config, description, export directory or None)."""
    if model_dir is None:
        cfg = load_config(resolve_config("main"))
        set_seed(cfg.train.seed)
        model, tokenizer = build_model(cfg)
        return model, tokenizer, cfg, "embedded all-MiniLM-L6-v2 + freshly initialised heads (main.yaml's model)", None
    if is_export(model_dir):
        manifest = read_manifest(model_dir)
        return (load_model(model_dir, manifest), read_tokenizer(model_dir), manifest.cfg, f"export {model_dir}",
                Path(model_dir))  # fmt: skip
    model, tokenizer, cfg = load_trained(model_dir)
    return model, tokenizer, cfg, f"trained run {model_dir}", None


def timed(predictor: Predictor, task: str, inputs: list) -> tuple[float, list]:
    start = time.perf_counter()
    results = predictor.predict(task, inputs).results
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", help="run directory, checkpoint or export (default: MiniLM, fresh heads)")
    parser.add_argument("--data-dir", help="data directory (default: ../shared/data, found)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's eval_batch_size (128)")
    parser.add_argument("--limit", type=int, default=None, help="at most N inputs per dev set")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model, tokenizer, cfg, described, export_dir = load(args.model_dir)
    batch = args.batch_size or cfg.train.eval_batch_size
    dev = split_inputs(resolve_data_dir(args.data_dir or cfg.data.dir), "dev", args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        if export_dir is None or not graph_path(export_dir, "sst").exists():
            started = time.perf_counter()
            export_dir = Path(tmp)
            write_export(model, tokenizer, cfg, export_dir, "onnx")
            print(f"ONNX export: {time.perf_counter() - started:.1f} s")
        predictors = {
            "torch": Predictor(TorchBackend(model, torch.device("cpu"), "fp32"), tokenizer, cfg.model, batch),
            "onnx": Predictor(OnnxBackend(export_dir, cfg.model), tokenizer, cfg.model, batch, backend_name="onnx"),
        }
        for predictor in predictors.values():  # untimed warm-up: one batch of each task
            for task, inputs in dev.items():
                predictor.predict(task, inputs[:batch])
        seconds = {name: {task: float("inf") for task in dev} for name in predictors}
        results: dict[str, dict[str, list]] = {name: {} for name in predictors}
        for _ in range(args.repeats):
            for task, inputs in dev.items():
                for name, predictor in predictors.items():
                    took, results[name][task] = timed(predictor, task, inputs)
                    seconds[name][task] = min(seconds[name][task], took)
        check = agreement(results["torch"], results["onnx"])

    print(f"model: {described}; {cfg.model.pair_encoding} pairs, {cfg.model.pooling} pooling, "
          f"max_length {cfg.model.max_length}")  # fmt: skip
    print(f"CPU: {os.cpu_count()} cores seen, {args.threads} threads (torch {torch.__version__}); batch {batch}; "
          f"best of {args.repeats}; 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          "(above the thread count, other processes shared the CPU)")  # fmt: skip
    print(f"check, ONNX vs PyTorch: {check}")
    print("| inputs | n | PyTorch | ONNX | ONNX / PyTorch |")
    print("|---|---|---|---|---|")
    for task, inputs in dev.items():
        rate = {name: len(inputs) / seconds[name][task] for name in predictors}
        unit = UNITS[task]
        print(f"| {NAMES[task]} | {len(inputs):,} | {rate['torch']:.1f} {unit} | {rate['onnx']:.1f} {unit} | "
              f"{rate['onnx'] / rate['torch']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
