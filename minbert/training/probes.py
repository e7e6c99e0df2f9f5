"""Dev evaluations during training, and the kept checkpoint: a phase's `eval_every_steps` probes
inside epochs (on a fixed subset of each dev set), and best.safetensors, chosen by full-dev scores
only (at epoch ends, and when a probe beats every earlier probe). `run` is the training.state.Run
(state.py builds the probe set with dev_probe, so this module does not import it back)."""

from __future__ import annotations

import time

from minbert.config import PhaseConfig, RunConfig
from minbert.runs import encode_all, evaluate_dev, fixed_sample
from minbert.tasks.data import Example
from minbert.tasks.encoding import EncodedTask
from minbert.tokenizer import WordPieceTokenizer
from minbert.training.logs import append_record


def keep_if_best(run, record: dict) -> None:
    """Write best.safetensors when the record's full-dev overall beats the best so far; count
    the evaluation for train.early_stopping."""
    scores, state = record["dev"], run.progress
    count_patience(run, record, state.best is None or scores["overall"] > state.best + run.cfg.train.early_stopping.min_delta)
    if state.best is None or scores["overall"] > state.best:
        state.best = scores["overall"]
        record["best"] = True
        if run.main:
            run.save_best(scores)


def count_patience(run, record: dict, improved: bool) -> None:
    """train.early_stopping (Hugging Face's EarlyStoppingCallback): a dev evaluation that does
    not beat the best overall so far by more than min_delta adds one to the count, one that
    does sets it back to 0; at `patience`, progress.stopped_early says why training stops here
    (the loop then stops; every rank sees the same scores, so every rank stops)."""
    rule, state = run.cfg.train.early_stopping, run.progress
    if rule.patience is None:
        return
    state.evals_without_improvement = 0 if improved else state.evals_without_improvement + 1
    if state.evals_without_improvement >= rule.patience:
        kind = "epoch" if "probe" not in record else "probe"
        state.stopped_early = {
            "step": record["step"], "phase": record["phase"], "epoch": record["epoch"], "at": kind,
            "reason": f"{rule.patience} dev evaluation(s) in a row without improving the best dev overall "
                      f"by more than {rule.min_delta}",
        }  # fmt: skip


def dev_probe(raw_dev: dict[str, list[Example]], tokenizer: WordPieceTokenizer, cfg: RunConfig) -> dict[str, EncodedTask]:
    """The dev examples scored every eval_every_steps steps of a phase: train.eval_subset of each
    task's dev set (a fixed random choice, the same for every run of a seed), or all of them."""
    chosen = {task: fixed_sample(examples, cfg.train.eval_subset, f"{cfg.train.seed}/dev-probe/{task}")
              for task, examples in raw_dev.items()}  # fmt: skip
    return encode_all({"dev": chosen}, tokenizer, cfg)["dev"]


def probe(run, phase: PhaseConfig) -> None:
    """A dev evaluation inside an epoch (the phase's eval_every_steps), on the probe examples
    (`dev_probe`). When the probe's overall beats every earlier probe's, the full dev sets are
    scored too, and they decide whether these weights become best.safetensors (so a plateau
    costs few full evaluations). Logged to evals.jsonl; the model is back in training mode after."""
    state, cfg = run.progress, run.cfg
    state.probe_due = True  # until it is logged: a run stopped inside it probes again on resume
    record = {"phase": phase.name, "phase_index": state.phase, "epoch": state.epoch + 1, "step": state.step,
              "elapsed_s": run.elapsed()}  # fmt: skip
    started = time.time()
    scores = evaluate_dev(run.model, run.probe, cfg, run.device)
    better = state.best_probe is None or scores["overall"] > state.best_probe
    dev = evaluate_dev(run.model, run.data["dev"], cfg, run.device) if better else None
    with run.stopper.hold():  # the evaluations may be cut by a stop; what they decide is kept whole
        record["probe"] = scores
        if better:
            state.best_probe, record["dev"] = scores["overall"], dev
            keep_if_best(run, record)
        else:  # below an earlier probe on the probe examples: no improvement (the full dev sets are not scored)
            count_patience(run, record, False)
        record["eval_s"] = round(time.time() - started, 1)  # the probe and any full-dev scoring
        run.model.train()
        if run.main:
            append_record(run.out_dir / "evals.jsonl", record)
            full = f"; full dev {record['dev']['overall']:.4f}" if "dev" in record else ""
            mark = " *best" if record.get("best") else ""
            print(f"[{phase.name} step {state.step}] dev probe {record['probe']['overall']:.4f}{full}{mark} | "
                  f"{record['elapsed_s']}s", flush=True)  # fmt: skip
        state.probe_due = False
    run.report_eval("probe", record)
