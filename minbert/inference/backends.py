"""What computes a Predictor's head outputs: a backend is (task, encoded inputs, indices of one
batch) -> the head's raw outputs for it. `torch`: the PyTorch model. `onnx`: an export's ONNX
graphs in onnxruntime (onnx_graphs.OnnxBackend). `int8`: ONNX graphs with int8 matrix products
in onnxruntime, on the CPU (onnx_graphs.quantize_graphs). An ensemble is a backend too
(ensemble.Ensemble)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from minbert import distributed
from minbert.config import RunConfig
from minbert.multitask import MultitaskBert
from minbert.tasks.encoding import EncodedTask
from minbert.tokenizer import WordPieceTokenizer

BACKENDS = ("torch", "onnx", "int8")
# The int8 backend's default batch size: smaller batches ran faster in onnxruntime on 2 CPU cores
# (Quora dev pairs: 982/s at 32, 812/s at 128; docs/RESULTS.md). The others use the run's
# eval_batch_size.
INT8_BATCH = 32

Backend = Callable[[str, EncodedTask, list[int]], torch.Tensor]


class TorchBackend:
    """The PyTorch model, in eval mode, at `precision`: "auto" (bf16 autocast where the device has
    native bf16, fp32 elsewhere: `distributed.resolve_precision`), "fp32" or "bf16". Not the
    run's training precision: a model trained in bf16 on one machine predicts in fp32 on a CPU
    without bf16, where bf16 would be emulated and slow."""

    def __init__(self, model: MultitaskBert, device: torch.device, precision: str = "auto"):
        self.model, self.device = model.to(device).eval(), device
        self.precision = distributed.resolve_precision(device, precision)[0]

    def __call__(self, task: str, data: EncodedTask, indices: list[int]) -> torch.Tensor:
        with distributed.autocast(self.device, self.precision):
            return self.model.predict_batch(task, data, indices, self.device)


def int8_backend(source: MultitaskBert | Path, tokenizer: WordPieceTokenizer, cfg: RunConfig) -> Backend:
    """The int8 backend where no int8 graphs are written yet: the ONNX graphs of `source` (a model,
    exported now, or a directory holding an export's fp32 graphs) made int8 by
    `onnx_graphs.quantize_graphs` in a temporary directory, loaded into onnxruntime, and the
    files removed. Takes some seconds per task; `minbert export --format onnx` writes them once."""
    import shutil
    import tempfile

    from minbert.inference.onnx_graphs import OnnxBackend, export_graphs, quantize_graphs
    from minbert.tasks.spec import TaskSet

    directory = Path(tempfile.mkdtemp(prefix="minbert-int8-"))
    try:
        if isinstance(source, MultitaskBert):
            export_graphs(source, tokenizer, directory)  # fp32 and int8 graphs
        else:
            quantize_graphs(source, TaskSet.of(cfg.tasks), directory)
        return OnnxBackend(directory, cfg, "int8").load_all()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def allowed_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; all cores where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
