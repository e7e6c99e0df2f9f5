"""`minbert evaluate`: the dev scores of a saved model, and the pictures of its dev outputs.

The dev outputs (gold labels, predictions and the probabilities behind them) go to
`dev-outputs.json`, from which `sst-confusion.png`, `sts-scatter.png` and `para-threshold.png`
are drawn (and redrawn by `minbert plot`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from minbert import distributed
from minbert.evaluation import dev_scores, hard_and_soft, head_outputs, model_outputs
from minbert.inference.backends import INT8_BATCH, int8_backend
from minbert.reports.plots import DEV_OUTPUTS, draw_evaluation, draw_or_explain, write_dev_outputs
from minbert.runs import encode_all, load_trained, needed_splits, read_all


def run_directory(checkpoint: str | Path) -> Path:
    """The run directory of a checkpoint given as a run directory or as one of its files."""
    checkpoint = Path(checkpoint)
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


def evaluate_checkpoint(checkpoint: str | Path, overrides=(), plots_dir: str | Path | None = None, device=None,
                        backend: str = "torch", precision: str = "auto") -> dict:  # fmt: skip
    """Dev scores of a model saved by `train`; writes dev-outputs.json and the three dev
    pictures into plots_dir (default: the checkpoint's run directory). `backend` "int8": the
    model's int8 ONNX graphs in onnxruntime, on the CPU (minbert.inference.backends.int8_backend);
    `precision`: the torch backend's (TorchBackend)."""
    device = torch.device(device) if device else distributed.default_device()
    model, tokenizer, cfg = load_trained(checkpoint, list(overrides))
    dev = encode_all(read_all(cfg, needed_splits(cfg, train=False, test=False)), tokenizer, cfg)["dev"]
    batch = cfg.train.eval_batch_size
    if backend == "int8":
        run = int8_backend(model, tokenizer, cfg)
        outputs = {task: hard_and_soft(dev[task].spec, head_outputs(lambda idx, t=task: run(t, dev[t], idx), task, dev[task],
                                                          INT8_BATCH)) for task in dev}  # fmt: skip
    else:
        model.to(device)
        outputs = {task: hard_and_soft(dev[task].spec, model_outputs(model, task, dev[task], batch, None, device, precision))
                   for task in dev}  # fmt: skip
    scores = dev_scores({task: hard for task, (hard, _) in outputs.items()}, dev)
    plots_dir = Path(plots_dir) if plots_dir else run_directory(checkpoint)
    plots_dir.mkdir(parents=True, exist_ok=True)
    write_dev_outputs(plots_dir / DEV_OUTPUTS, {
        task: {"ids": dev[task].ids, "gold": dev[task].labels.tolist(), "prediction": hard, "soft": soft}
        for task, (hard, soft) in outputs.items()})  # fmt: skip
    if draw_or_explain("dev pictures", lambda: draw_evaluation(plots_dir / DEV_OUTPUTS, plots_dir)):
        print(f"dev outputs and pictures written to {plots_dir}")
    return {k: round(v, 4) for k, v in scores.items()}
