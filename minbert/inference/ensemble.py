"""Ensembles: several trained runs (other seeds, other recipes) answering together.

Each member's raw head outputs become soft predictions (`TaskSpec.soft_predict`: class
probabilities, P(positive), the score); the ensemble averages them over the members and writes
the mean again as pseudo-logits (`pseudo_logits`), so that `TaskSpec.predict`, the Predictor
and its threshold read an ensemble's outputs as they read one model's. An input costs one
forward pass per member.

`minbert ensemble RUN ... --out DIR` (`predict_ensemble`) writes into DIR the prediction files
of the dev and test splits, `metrics.json` (the ensemble's dev scores, and each member's) and
`ensemble.json` (the members and overrides: what `Predictor.load(DIR)` reads); with
`--soft-labels TASK,...` also `train-soft-{task}.jsonl`, the averaged soft predictions on a
task's training split, which `load_soft_labels` reads back for distillation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from minbert import distributed
from minbert.config import RunConfig
from minbert.evaluation import dev_scores, head_outputs, overall_formula, prediction_path, write_predictions
from minbert.inference.backends import TorchBackend
from minbert.run_files import BEST, LAST, atomic_write
from minbert.runs import encode_all, load_trained, needed_splits, read_all
from minbert.tasks.data import soft_labels_path, write_soft_labels
from minbert.tasks.encoding import EncodedTask
from minbert.tasks.spec import TaskSet, TaskSpec, head_task
from minbert.tokenizer import WordPieceTokenizer

ENSEMBLE_FILE = "ensemble.json"
# Keeps averaged probabilities off 0 and 1, so that every pseudo-logit is finite; a change far
# below what float32 outputs resolve.
P_MIN = 1e-12


# ---------------------------------------------------------------------------------------
# Averaging


def mean_soft(spec: TaskSpec, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' raw head outputs for the same inputs -> the mean of their soft predictions,
    in float64: class probabilities (N, K), P(positive) (N,) or scores (N,)."""
    return torch.stack([spec.soft_predict(o.double()) for o in outputs]).mean(dim=0)


def pseudo_logits(spec: TaskSpec, soft: torch.Tensor) -> torch.Tensor:
    """Soft predictions -> float32 outputs that read as the head's: log p for classification
    (softmax gives p back, argmax is p's), logit p for binary (sigmoid gives p back; > 0 exactly
    when p > 0.5), the score itself for regression."""
    kind, soft = spec.kind, soft.double()
    if kind == "classification":
        return soft.clamp_min(P_MIN).log().float()
    if kind == "binary":
        return torch.logit(soft, eps=P_MIN).float()
    return soft.float()


def combine(spec: TaskSpec, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble's output: the members' raw outputs averaged as soft predictions, as pseudo-logits."""
    return pseudo_logits(spec, mean_soft(spec, outputs))


# ---------------------------------------------------------------------------------------
# Members


@dataclass
class Member:
    path: Path  # the run directory or checkpoint file, absolute
    backend: TorchBackend
    tokenizer: WordPieceTokenizer
    cfg: RunConfig


def disagreements(first: Member, other: Member) -> list[str]:
    """What `other` does not share with `first` among what an average needs: the tasks (names and
    declarations), the tokenizer vocab, model.pair_encoding and model.max_length."""
    ours, theirs = TaskSet.of(first.cfg.tasks), TaskSet.of(other.cfg.tasks)
    out = []
    if sorted(theirs) != sorted(ours):
        out.append(f"tasks ({sorted(theirs)}, not {sorted(ours)})")
    elif theirs != ours:
        out.append(f"the declaration of task(s) {[n for n in ours if ours[n] != theirs[n]]}")
    if other.tokenizer.vocab_file.read_bytes() != first.tokenizer.vocab_file.read_bytes():
        out.append(f"the tokenizer vocab ({other.tokenizer.vocab_file}, not {first.tokenizer.vocab_file})")
    for key in ("pair_encoding", "max_length"):
        mine, yours = getattr(first.cfg.model, key), getattr(other.cfg.model, key)
        if mine != yours:
            out.append(f"model.{key} ({yours!r}, not {mine!r})")
    return out


class Ensemble:
    """Members that agree on tasks, vocab, pair encoding and max_length. Called as a Predictor
    backend: (task, data, indices) -> the batch's pseudo-logits, one forward per member."""

    def __init__(self, members: list[Member], overrides: Sequence[str] = ()):
        self.members, self.overrides = members, list(overrides)
        self.cfg, self.tokenizer = members[0].cfg, members[0].tokenizer  # the first member's, as agreed
        self.tasks = TaskSet.of(self.cfg.tasks)

    def cost(self) -> str:
        """What one input costs, in words."""
        cross = self.cfg.model.pair_encoding == "cross"
        twice = sum(m.cfg.model.symmetric_predict for m in self.members) if cross else 0
        return (f"{len(self.members)} forward passes per input, one per member"
                + (f"; {twice} member(s) with model.symmetric_predict take two per pair" if twice else ""))  # fmt: skip

    def __call__(self, task: str, data: EncodedTask, indices: list[int]) -> torch.Tensor:
        head = head_task(task)
        return combine(self.tasks[task], [m.backend(head, data, indices) for m in self.members])

    def member_outputs(self, task: str, data: EncodedTask, progress: bool | None = None) -> list[torch.Tensor]:
        """Each member's raw head outputs for every example of `data` (the head of `head_task(task)`),
        in input order; the batches are those of `Predictor.predict`, so the numbers are too."""
        head, batch_size = head_task(task), self.cfg.train.eval_batch_size
        return [head_outputs(lambda indices, m=m: m.backend(head, data, indices), head, data, batch_size, progress)
                for m in self.members]  # fmt: skip


def load_ensemble(runs: Sequence[str | Path], overrides: Sequence[str] = (), device: str | torch.device | None = None,
                  precision: str = "auto") -> Ensemble:  # fmt: skip
    """Members from run directories (their best.safetensors) or checkpoint files, `overrides`
    applied to each, predicting at `precision` (TorchBackend); a ValueError names the first
    member that does not fit the first one."""
    if not runs:
        raise ValueError("an ensemble needs at least one run")
    device = torch.device(device) if device else distributed.default_device()
    members: list[Member] = []
    for run in runs:
        model, tokenizer, cfg = load_trained(run, list(overrides))
        member = Member(Path(run).resolve(), TorchBackend(model, device, precision), tokenizer, cfg)
        differ = disagreements(members[0], member) if members else []
        if differ:
            raise ValueError(f"{run}: differs from the first member, {members[0].path}, in {'; '.join(differ)}")
        members.append(member)
    return Ensemble(members, overrides)


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def load_ensemble_dir(directory: str | Path, overrides: Sequence[str] = (), device: str | torch.device | None = None,
                      precision: str = "auto") -> tuple[Ensemble, dict[str, float]]:  # fmt: skip
    """The ensemble `minbert ensemble` wrote into `directory` (its ensemble.json: the members, with
    the overrides they were written with, then `overrides`), and its dev scores (metrics.json)."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / ENSEMBLE_FILE).read_text())
        metrics = json.loads((directory / "metrics.json").read_text())
        runs, saved = list(manifest["members"]), list(manifest["overrides"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{directory}: not a minbert ensemble directory ({type(e).__name__}: {e})") from None
    dev = {k: v for k, v in metrics.items() if k not in ("overall_formula", "members")}
    return load_ensemble(runs, [*saved, *overrides], device, precision), dev


# ---------------------------------------------------------------------------------------
# `minbert ensemble`


def predict_ensemble(runs: Sequence[str | Path], out_dir: str | Path, overrides: Sequence[str] = (),
                     soft_tasks: Sequence[str] = (), test: bool = True, progress: bool | None = None,
                     device: str | torch.device | None = None) -> dict[str, float]:  # fmt: skip
    """Write the ensemble of `runs` into out_dir: the prediction files of the dev (and, `test`,
    test) splits, metrics.json, ensemble.json, and train-soft-{task}.jsonl for `soft_tasks`.
    Every member is loaded and every data file read before the first prediction; every file is
    written atomically. Returns the ensemble's dev scores.
    (7 parameters: the command's arguments, each optional but the runs and out_dir.)"""
    out_dir = Path(out_dir)
    if any((out_dir / name).exists() for name in (BEST, LAST)):
        raise ValueError(f"{out_dir}: holds a training run; write the ensemble into a directory of its own")
    ensemble = load_ensemble(runs, overrides, device)
    cfg = ensemble.cfg
    for task in soft_tasks:
        if task not in ensemble.tasks.trainable:  # a train-only task (sst_phrases) is its owner's (sst)
            raise ValueError(f"--soft-labels {task}: not a task of the members {list(ensemble.tasks)}, nor a "
                             f"train-only task of one")  # fmt: skip
    splits = needed_splits(cfg, train=False, test=test)
    if soft_tasks:
        splits["train"] = tuple(soft_tasks)
    data = encode_all(read_all(cfg, splits), ensemble.tokenizer, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)

    outputs = {(split, task): ensemble.member_outputs(task, encoded, progress)
               for split, tasks in data.items() for task, encoded in tasks.items()}  # fmt: skip
    dev = data["dev"]
    scores = _scores({task: combine(dev[task].spec, outputs["dev", task]) for task in dev}, dev)
    members = [{"path": str(m.path), "dev": _scores({task: outputs["dev", task][i] for task in dev}, dev)}
               for i, m in enumerate(ensemble.members)]  # fmt: skip
    for (split, task), outs in outputs.items():
        ids, spec = data[split][task].ids, data[split][task].spec
        if split == "train":
            write_soft_labels(soft_labels_path(out_dir, task), ids, mean_soft(spec, outs))
        else:
            predictions = spec.predict(combine(spec, outs)).float().tolist()
            write_predictions(prediction_path(out_dir, spec, split), ids, predictions, spec)
    _write_json(out_dir / "metrics.json", {**scores, "overall_formula": overall_formula(dev), "members": members})
    _write_json(out_dir / ENSEMBLE_FILE, {"members": [str(m.path) for m in ensemble.members],
                                          "overrides": ensemble.overrides, "member_count": len(ensemble.members),
                                          "cost": ensemble.cost()})  # fmt: skip
    return scores


def _scores(outputs: dict[str, torch.Tensor], dev: dict[str, EncodedTask]) -> dict[str, float]:
    """Dev scores of head outputs (a model's or pseudo-logits), rounded as a run's metrics.json."""
    predictions = {task: dev[task].spec.predict(o).float().tolist() for task, o in outputs.items()}
    return {k: round(v, 4) for k, v in dev_scores(predictions, dev).items()}


def _write_json(path: Path, value: dict) -> None:
    text = json.dumps(value, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
