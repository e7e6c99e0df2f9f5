"""The training recipe: one plain function that reads like the account of a run.

seed -> read and validate all data -> tokenizer and model (heads for the run's tasks) ->
tokenised data (and a teacher's soft labels) -> start: fresh, resumed or continued -> each
phase: optimizer, schedule, epochs of sampled task batches, dev evaluation, checkpoints ->
the best checkpoint's dev scores and prediction files, metrics.json, the run's pictures.
Each step is a named function of training/ (state, loop, probes, logs); `Run` carries what
they share.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from minbert import distributed
from minbert.config import RunConfig
from minbert.evaluation import overall_formula
from minbert.reports.plots import CURVES, draw_curves, draw_or_explain
from minbert.run_files import BEST, LAST, RunError, atomic_write, load_checkpoint
from minbert.runs import build_model, encode_all, needed_splits, read_all, write_outputs
from minbert.training.logs import print_history
from minbert.training.loop import run_phase
from minbert.training.run_state import RunLock
from minbert.training.state import (Run, TrainOptions, attach_soft_labels, check_data, launch_checks, set_seed,
                                    settle_precision, start)  # fmt: skip
from minbert.training.stopping import EvalCallbackStop, Stopper, StopRequested


def train(cfg: RunConfig, out_dir: str | Path, options: TrainOptions | None = None) -> dict[str, float]:
    """Train as `cfg` says, writing everything into out_dir (locked while the run writes it);
    returns the final dev scores and the training wall time ({} when options.stop_after_epochs
    stopped the run first). `options`: resume, init_from, overwrite, progress bars, device.
    SIGTERM or SIGINT stop the run after the step in progress, with last.safetensors at that
    step: `TrainingStopped` (training/stopping.py)."""
    options, out_dir = options or TrainOptions(), Path(out_dir)
    distributed.init(cfg.train.ddp_timeout_s)
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    run = None
    with RunLock(out_dir) if distributed.is_main() else contextlib.nullcontext(), \
            Stopper(immediate=distributed.world_size() == 1) as stopper:  # fmt: skip
        try:
            cfg = settle_precision(cfg, out_dir, options)  # "auto": bf16 where the CPU has it natively
            resume_ckpt = launch_checks(cfg, out_dir, options)
            set_seed(cfg.train.seed)
            raw = read_all(cfg, needed_splits(cfg))  # fails here, before any long work, on bad data
            record = check_data(cfg, out_dir, options, resume_ckpt)  # and on data changed since the run started
            model, tokenizer = build_model(cfg)
            data = encode_all(raw, tokenizer, cfg)
            attach_soft_labels(data.get("train", {}), cfg)
            with stopper.hold():
                run = start(cfg, out_dir, model, tokenizer, (raw, data, record), options, resume_ckpt)
                run.stopper = stopper
            scores = _train_and_finish(run)  # {}: stopped after options.stop_after_epochs
            if scores and run.main:  # a picture that cannot be drawn is said, never fails the run
                draw_or_explain(str(out_dir / CURVES), lambda: draw_curves(out_dir))
            return scores
        except EvalCallbackStop as stop:  # options.on_eval raised (a sweep pruned this trial)
            if run is not None:
                run.stopped_by_callback(stop)
            raise stop.cause from None
        except StopRequested:
            raise (run.save_on_stop() if run is not None else stopper.stopped(None, out_dir / LAST)) from None


def _train_and_finish(run: Run) -> dict[str, float]:
    """The phases left, then `finish`; {} when options.stop_after_epochs stops the run first.
    Under torchrun, a collective that fails (a rank lost, or silent past train.ddp_timeout_s)
    stops this rank with a line naming the ranks that did not answer."""
    try:
        for phase_idx in range(run.progress.phase, len(run.cfg.train.phases)):
            if run.progress.stopped_early is not None:  # train.early_stopping: no more training
                break
            if not run_phase(run, phase_idx):
                return {}
        return finish(run)
    except RuntimeError as e:
        if distributed.world_size() == 1 or isinstance(e, RunError):
            raise
        lost = distributed.lost_ranks()
        if lost == []:  # every rank answered: not a lost rank
            raise
        raise run.lost_rank(e, lost) from e
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()


def finish(run: Run) -> dict[str, float]:
    """Reload the best checkpoint, score it on dev, write the prediction files and metrics.json
    (scores and the data files' fingerprints only, so that two runs of one config and seed give
    identical files; the wall time goes to timing.json)."""
    model, cfg, out_dir = run.model, run.cfg, run.out_dir
    model.bert.requires_grad_(True)
    distributed.barrier()
    features = _final_features(run)
    elapsed = time.time() - run.started
    if (out_dir / BEST).exists():
        model.load_state_dict(load_checkpoint(out_dir / BEST).model)
    model.to(run.device)
    scores = write_outputs(model, run.data, cfg, out_dir, run.device, features)
    if distributed.is_main():
        metrics = {**scores, "overall_formula": overall_formula(run.data["dev"])}
        if cfg.train.early_stopping.patience is not None:  # where and why it stopped; None: it did not fire
            metrics["stopped_early"] = run.progress.stopped_early
        metrics["data"] = run.data_files
        metrics = json.dumps(metrics, indent=2) + "\n"
        atomic_write(out_dir / "metrics.json", lambda tmp: tmp.write_text(metrics))
        timing = json.dumps({"train_wall_s": round(elapsed, 1), "precision": cfg.train.precision}) + "\n"
        atomic_write(out_dir / "timing.json", lambda tmp: tmp.write_text(timing))
        print_history(out_dir / "epochs.jsonl")
    return {**scores, "train_wall_s": round(elapsed, 1)}


def _final_features(run: Run):
    """An encoder that never trained still matches its cached vectors: predict from those."""
    encoder_trained = any(p.mode != "frozen" for p in run.cfg.train.phases)
    if encoder_trained or not run.cfg.train.cache_features:
        return None
    if run.features is None:  # resumed after the last epoch: nothing cached in this process yet
        from minbert.training.features import FrozenFeatures

        return FrozenFeatures(run.model, run.data, run.cfg, run.device)
    return run.features
