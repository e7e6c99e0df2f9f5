"""Predictor throughput: PyTorch and ONNX Runtime, in fp32 and int8, measured in the same run.

What: `Predictor.predict` end to end (tokenisation, length-sorted batches, the model, the
results in input order) on the SST dev sentences (1,101, in sentences/s), the Quora dev pairs
(5,000) and the STS dev pairs (863, in pairs/s), on the same model and threads: PyTorch fp32 at
the run's eval_batch_size (128; the baseline: `--backend torch --precision fp32`), PyTorch fp32 at the
int8 backend's batch size (32), PyTorch under bf16 autocast at both sizes (`--precision bf16`, what
`auto` picks on a CPU with AMX or AVX512-BF16), PyTorch int8 (torch.ao dynamic quantisation of the encoder's linear
layers, per channel: the other int8 route, for comparison), ONNX fp32 (`--backend onnx`: `minbert
export --format onnx`'s graphs) and ONNX int8 (`--backend int8`: the export's `{task}.int8.onnx`,
at its default batch of 32). --batch-size N sets one batch size for all.
Model: --model-dir, a run directory, a checkpoint file or an export (its ONNX graphs are
written to a temporary directory first where it has none); by default the embedded
all-MiniLM-L6-v2 with freshly initialised heads under minbert/configs/main.yaml's model section
(the main job's model: cross-encoded pairs, mean pooling), which has the trained model's shapes
and costs, not its predictions. The output says which was measured.
How: one process; torch and onnxruntime both get --threads intra-op threads (default: the cores
this process may use); each backend first predicts one untimed batch of each task; then,
--repeats times, task by task, the backends run one after the other, and the best time of each is
kept (on a shared CPU, interleaving and the best of several runs keep other processes' load out
of the comparison as far as they can). The ONNX fp32 predictions are compared with PyTorch's as a
check that both did the same work; the int8 ones are what they are: with a trained model
(--model-dir RUN), the dev scores of each backend are printed too.
Run (from the repository root):
    nice -n 10 python benchmarks/predictor_throughput.py [--model-dir DIR] [--threads 2] [--limit N]
        [--batch-size N] [--repeats 1] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from minbert.config import load_config
from minbert.configs import resolve_config
from minbert.tasks.data import resolve_data_dir
from minbert.inference.export import agreement, write_export
from minbert.inference.manifest import is_export, load_model, read_manifest, read_tokenizer
from minbert.inference.onnx_graphs import OnnxBackend, graph_path, has_graphs, quantize_graphs
from minbert.inference.backends import INT8_BATCH, TorchBackend, allowed_cores
from minbert.inference.predictor import Predictor, split_inputs
from minbert.runs import build_model, load_trained
from minbert.tasks.spec import TaskSet
from minbert.training.state import set_seed

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
    parser.add_argument("--threads", type=int, default=allowed_cores(), help="default: the cores this process may use")
    parser.add_argument("--batch-size", type=int, default=None, help="one batch size for every row (default: "
                        "the run's eval_batch_size, 128, and the int8 backend's 32)")
    parser.add_argument("--limit", type=int, default=None, help="at most N inputs per dev set")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model, tokenizer, cfg, described, export_dir = load(args.model_dir)
    batch = args.batch_size or cfg.train.eval_batch_size
    data_dir = resolve_data_dir(args.data_dir or cfg.data.dir)
    dev = split_inputs(data_dir, TaskSet.seed(), "dev", args.limit)
    labelled = None
    if args.model_dir is not None and args.limit is None:  # a trained model: score every backend's predictions
        from minbert.tasks.spec import BUILTIN as TASKS

        labelled = {t: [e.label for e in TASKS[t].read(data_dir, "dev").examples] for t in dev}
    with tempfile.TemporaryDirectory() as tmp:
        if export_dir is None or not graph_path(export_dir, "sst").exists():
            started = time.perf_counter()
            export_dir = Path(tmp)
            write_export(model, tokenizer, cfg, export_dir, "onnx")
            print(f"ONNX export: {time.perf_counter() - started:.1f} s")
        int8_dir = export_dir
        if not has_graphs(export_dir, TaskSet.seed(), "int8"):  # an export written before int8 graphs were
            int8_dir = Path(tmp) / "int8"
            quantize_graphs(export_dir, TaskSet.seed(), int8_dir)
        cpu = torch.device("cpu")
        small = args.batch_size or INT8_BATCH

        def onnx(directory: Path, precision: str, size: int) -> Predictor:
            return Predictor(OnnxBackend(directory, cfg, precision), tokenizer, cfg, size)

        predictors = {
            "torch": Predictor(TorchBackend(model, cpu, "fp32"), tokenizer, cfg, batch),
            f"torch, batch {small}": Predictor(TorchBackend(model, cpu, "fp32"), tokenizer, cfg, small),
            "torch bf16": Predictor(TorchBackend(model, cpu, "bf16"), tokenizer, cfg, batch),
            f"torch bf16, batch {small}": Predictor(TorchBackend(model, cpu, "bf16"), tokenizer, cfg, small),
            "torch.ao int8": Predictor(TorchBackend(torch_ao_int8(model), cpu, "fp32"), tokenizer, cfg, small),
            "onnx": onnx(export_dir, "fp32", batch),
            "onnx int8 (--backend int8)": onnx(int8_dir, "int8", small),
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
    print(f"CPU: {os.cpu_count()} cores seen, {allowed_cores()} allowed, {args.threads} threads (torch {torch.__version__}); batch {batch} / {small}; "
          f"best of {args.repeats}; 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          "(above the thread count, other processes shared the CPU)")  # fmt: skip
    print(f"check, ONNX fp32 vs PyTorch fp32: {check}")
    others = [name for name in predictors if name != "torch"]
    print("| inputs | n | PyTorch fp32 | " + " | ".join(f"{n} (x fp32)" for n in others) + " |")
    print("|---|---|---|" + "---|" * len(others))
    for task, inputs in dev.items():
        rate = {name: len(inputs) / seconds[name][task] for name in predictors}
        cells = [f"{rate[n]:.1f} ({rate[n] / rate['torch']:.2f}x)" for n in others]
        print(f"| {NAMES[task]} | {len(inputs):,} | {rate['torch']:.1f} {UNITS[task]} | " + " | ".join(cells) + " |")
    total = {name: sum(len(dev[t]) for t in dev) / sum(seconds[name].values()) for name in predictors}
    print("| all three, inputs/s | " + f"{sum(len(v) for v in dev.values()):,} | {total['torch']:.1f} | "
          + " | ".join(f"{total[n]:.1f} ({total[n] / total['torch']:.2f}x)" for n in others) + " |")  # fmt: skip
    if labelled:
        print("dev scores (the whole dev sets were predicted):")
        for name in predictors:
            print(f"  {name}: {json.dumps(dev_scores_of(results[name], labelled))}")


def torch_ao_int8(model):
    """A copy of the model with the encoder's Linear layers dynamically quantised by torch.ao
    (int8 weights, one scale per output channel); embeddings, LayerNorms and heads stay fp32."""
    import copy

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(model).cpu().eval()
    model.bert.encoder = quantize_dynamic(model.bert.encoder, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                          dtype=torch.qint8)  # fmt: skip
    return model


def dev_scores_of(results: dict[str, list], labelled: dict) -> dict[str, float]:
    """The dev scores of Predictor results (labels, decisions, scores) against the dev labels."""
    from minbert.tasks.metrics import overall_score, pearson

    sst = sum(r.label == y for r, y in zip(results["sst"], labelled["sst"])) / len(labelled["sst"])
    para = sum(int(r.positive) == y for r, y in zip(results["para"], labelled["para"])) / len(labelled["para"])
    sts = pearson(results["sts"], labelled["sts"])
    return {"sst": round(sst, 4), "para": round(para, 4), "sts": round(sts, 4), "overall": round(overall_score(sst, para, sts), 4)}


if __name__ == "__main__":
    main()
