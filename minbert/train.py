"""The training recipe: one plain function wiring the pieces in a fixed order.

seed -> the run's tasks -> read and validate all data -> tokenizer and model -> for each
phase: optimizer, schedule, epochs of sampled task batches, dev evaluation -> best checkpoint
-> dev scores and the prediction files. What a checkpoint holds, and how a run resumes
from one mid-epoch, is minbert/run_state.py; `Run` carries what the recipe's parts share.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minbert import distributed
from minbert.checkpoint import CheckpointError, load_pretrained, resolve_checkpoint_dir
from minbert.config import ConfigError, PhaseConfig, RunConfig, load_config, save_config, to_dict
from minbert.data import Example, length_bucketed_batches, resolve_data_dir
from minbert.evaluation import dev_scores, overall_formula, predict, prediction_path, write_predictions
from minbert.model import BertConfig, BertModel
from minbert.multitask import EncodedTask, MultitaskBert
from minbert.reports.plots import CURVES, DEV_OUTPUTS, EVALUATION_PICTURES, draw_curves, draw_or_explain
from minbert.run_state import (BEST, LAST, Checkpoint, CheckpointTimer, Progress, RunError, RunLock, atomic_write,
                               config_differences, load_checkpoint, log_sizes, rng_state,
                               save_checkpoint, set_rng_state, truncate_logs)  # fmt: skip
from minbert.samplers import epoch_schedule
from minbert.tasks import SEED_TASKS, TASKS, TRAIN_ONLY, head_task, use_tasks
from minbert.tokenizer import WordPieceTokenizer

ALL_TASKS = SEED_TASKS  # the seed report's three tasks; a run's own are cfg.tasks


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Data


def read_all(cfg: RunConfig, splits: dict[str, tuple[str, ...]]) -> dict[str, dict[str, list[Example]]]:
    """Read and validate every file the run needs, before any model is built."""
    data_dir = resolve_data_dir(cfg.data.dir)
    out: dict[str, dict[str, list[Example]]] = {}
    for split, tasks in splits.items():
        out[split] = {}
        for task in tasks:
            result = TASKS[head_task(task)].read(data_dir, split, cfg.data.skip_bad_rows)
            if result.skipped and task not in TRAIN_ONLY:
                print(f"{result.path}: {result.skipped_summary()}")
            examples = result.examples
            if split == "train" and (task == "sst_phrases" or (task == "sst" and cfg.data.sst_phrases)):
                from minbert.phrases import phrase_examples

                phrases = phrase_examples(data_dir / "sst-trees-train.txt", examples, cfg.data.phrase_min_words)
                examples = phrases if task == "sst_phrases" else examples + phrases
            cap = cfg.data.max_train_examples if split == "train" else cfg.data.max_eval_examples
            out[split][task] = fixed_sample(examples, cap, f"{cfg.train.seed}/{split}/{task}")
    return out


def fixed_sample(examples: list[Example], k: int | None, key: str) -> list[Example]:
    """k of the examples, chosen at random by `key` (the same choice every time), in file order;
    all of them where k is None or not below their number."""
    if k is None or k >= len(examples):
        return examples
    return [examples[i] for i in sorted(random.Random(key).sample(range(len(examples)), k))]


def needed_splits(cfg: RunConfig, train: bool = True, test: bool | None = None) -> dict[str, tuple[str, ...]]:
    """The files a run reads, by split: the trained tasks' train files, every task's dev file,
    and (test=None: if cfg.train.predict_test) the test file of every task that has one."""
    specs = use_tasks(cfg.tasks)
    trained = (*specs, *(t for t in TRAIN_ONLY if TRAIN_ONLY[t] in specs))
    splits = {"train": tuple(t for t in trained if any(t in p.tasks for p in cfg.train.phases))} if train else {}
    splits["dev"] = tuple(specs)
    if cfg.train.predict_test if test is None else test:
        splits["test"] = tuple(t for t, spec in specs.items() if "test" in spec.files)
    return splits


def encode_all(raw, tokenizer: WordPieceTokenizer, cfg: RunConfig) -> dict[str, dict[str, EncodedTask]]:
    return {
        split: {
            task: EncodedTask(TASKS[head_task(task)], examples, tokenizer,
                              TASKS[head_task(task)].pair_encoding or cfg.model.pair_encoding, cfg.model.max_length)  # fmt: skip
            for task, examples in tasks.items()
        }
        for split, tasks in raw.items()
    }


def attach_soft_labels(train: dict[str, EncodedTask], cfg: RunConfig) -> None:
    """Distillation: every training task with soft labels in cfg.train.distill_from (a directory
    written by `minbert ensemble --soft-labels`) gets the teacher's, aligned by example id."""
    if not cfg.train.distill_from:
        return
    from minbert.ensemble import load_soft_labels, soft_labels_path

    folder = Path(cfg.train.distill_from)
    found = [t for t in train if soft_labels_path(folder, t).is_file()]
    if not found:
        raise ConfigError(f"train.distill_from: {folder} holds no soft labels for the run's training tasks "
                          f"{tuple(train)} (write them with minbert ensemble ... --soft-labels TASK,...)")  # fmt: skip
    for task in found:
        train[task].soft = load_soft_labels(folder, task, train[task].ids)


# ---------------------------------------------------------------------------------------
# Model, optimizer, schedule


def build_model(cfg: RunConfig, bert_config: dict | None = None) -> tuple[MultitaskBert, WordPieceTokenizer]:
    """Pretrained weights from cfg.model.checkpoint, or (bert_config given) a bare model whose
    weights come from a minbert checkpoint next."""
    ckpt_dir = resolve_checkpoint_dir(cfg.model.checkpoint)
    tokenizer = WordPieceTokenizer(ckpt_dir / "vocab.txt")
    bert = BertModel(BertConfig(**bert_config)) if bert_config else load_pretrained(ckpt_dir)
    if cfg.model.max_length > bert.config.max_position_embeddings:
        positions = bert.config.max_position_embeddings
        raise ConfigError(f"model.max_length: {cfg.model.max_length} is more than the {positions} positions "
                          f"(max_position_embeddings) of the checkpoint {ckpt_dir}")  # fmt: skip
    return MultitaskBert(bert, cfg.model, use_tasks(cfg.tasks)), tokenizer


def layer_id(name: str, num_layers: int) -> int:
    """Depth of an encoder parameter: embeddings 0, layer i -> i + 1, pooler num_layers + 1."""
    if name.startswith("bert.embeddings."):
        return 0
    if name.startswith("bert.encoder.layer."):
        return int(name.split(".")[3]) + 1
    return num_layers + 1


def make_optimizer(model: MultitaskBert, phase: PhaseConfig, fused: bool, extra: torch.nn.Module | None = None) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not biases or LayerNorm gains); layer-wise lr decay
    (Sun et al. 2019): lr_l = lr * decay^(L + 1 - l); heads at head_lr."""
    L = model.bert.config.num_hidden_layers
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    named = list(model.named_parameters()) + ([("heads.mlm." + n, p) for n, p in extra.named_parameters()] if extra else [])
    for name, p in named:
        if not p.requires_grad:
            continue
        if name.startswith("heads."):
            lr = phase.head_lr or phase.lr
        else:
            lr = phase.lr * phase.layer_lr_decay ** (L + 1 - layer_id(name, L))
        wd = phase.weight_decay if p.dim() >= 2 else 0.0
        groups.setdefault((lr, wd), []).append(p)
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    return torch.optim.AdamW(param_groups, fused=fused or None)


def lr_lambda(phase: PhaseConfig, total_steps: int):
    warmup = int(phase.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if phase.decay == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        return 1.0

    return factor


# ---------------------------------------------------------------------------------------
# Batch streams: each task's training set, reshuffled (length-bucketed) at each pass.


@dataclass
class TaskStream:
    task: str
    passes: int = 0  # completed passes over the task's training set
    position: int = 0  # next batch within the current pass
    _batches: list[list[int]] | None = field(default=None, repr=False)

    def next_indices(self, data: EncodedTask, batch_size: int, seed: int, bucket_batches: int = 50) -> list[int]:
        if self._batches is None:
            rng = random.Random(f"{seed}/{self.task}/pass{self.passes}")
            self._batches = length_bucketed_batches(data.lengths, batch_size, rng, bucket_batches)
        indices = self._batches[self.position]
        self.position += 1
        if self.position == len(self._batches):
            self.passes, self.position, self._batches = self.passes + 1, 0, None
        return indices

    def state(self) -> dict:
        return {"passes": self.passes, "position": self.position}


# ---------------------------------------------------------------------------------------
# The recipe

LOGS = ("steps.jsonl", "epochs.jsonl", "evals.jsonl")
# Keys that may change when a run is resumed: they decide when files are written (and how
# many threads compute), not what is computed.
RESUMABLE_CHANGES = ("train.checkpoint_every_steps", "train.checkpoint_every_minutes", "train.log_every_steps",
                     "train.threads", "train.tensorboard")  # fmt: skip
RUN_FILES = (LAST, BEST, "metrics.json", "timing.json", "config.yaml", *LOGS,
             CURVES, DEV_OUTPUTS, *EVALUATION_PICTURES.values())  # fmt: skip


@dataclass
class Run:
    """What the recipe's parts share: config, model, data, and where the run stands."""

    cfg: RunConfig
    out_dir: Path
    model: MultitaskBert
    net: torch.nn.Module  # the model, or its DDP wrapper
    data: dict[str, dict[str, EncodedTask]]
    device: torch.device
    progress: Progress
    mlm_head: torch.nn.Module | None
    show_bars: bool
    started: float = field(default_factory=time.time)  # this process's start
    streams: dict[str, TaskStream] = field(default_factory=dict)
    features: object | None = None  # FrozenFeatures, in a frozen phase with cached vectors
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    timer: CheckpointTimer | None = None
    tensorboard: object | None = None  # a TensorBoardLog on rank 0 when train.tensorboard
    probe: dict[str, EncodedTask] | None = None  # the dev examples of eval_every_steps (dev_probe)

    def __post_init__(self) -> None:
        self.earlier_s = self.progress.elapsed_s  # training time of earlier processes (resumed runs)
        self.saved_step = self.progress.step  # the step of out_dir/last.safetensors, if there is one
        self.timer = CheckpointTimer(self.cfg.train.checkpoint_every_steps, self.cfg.train.checkpoint_every_minutes)
        self.timer.reset(self.progress.step)

    @property
    def main(self) -> bool:
        return distributed.is_main()

    def elapsed(self) -> float:
        return round(self.earlier_s + time.time() - self.started, 1)

    def save_last(self) -> None:
        """last.safetensors: everything needed to continue from this step (rank 0 only)."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):  # never saved over a good one
            raise self.diverged(f"non-finite weights after step {self.progress.step}")
        self.progress.streams = {t: s.state() for t, s in self.streams.items()}
        self.progress.log_bytes = log_sizes(self.out_dir, LOGS)
        self.progress.elapsed_s = self.elapsed()
        save_checkpoint(Checkpoint(
            self.model.state_dict(), to_dict(self.cfg), vars(self.model.bert.config), None, self.progress,
            self.optimizer.state_dict(), self.scheduler.state_dict(), rng_state(),
            self.mlm_head.state_dict() if self.mlm_head is not None else None), self.out_dir / LAST)  # fmt: skip
        self.saved_step = self.progress.step
        self.timer.reset(self.progress.step)

    def diverged(self, what: str) -> RunError:
        last = self.out_dir / LAST
        kept = f"{last} (step {self.saved_step}) is intact" if last.exists() else "no checkpoint had been written yet"
        return RunError(f"training diverged: {what}; stopped with no predictions written; {kept}")


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    init_from: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """Train as `cfg` says, writing everything into out_dir; returns the final dev scores.

    `resume=True` continues from out_dir/last.safetensors (or starts over if the run was
    stopped before its first checkpoint); a fresh run refuses a directory that holds a run
    unless `overwrite`. `stop_after_epochs` stops (as an interruption would) after that many
    epochs of this call. `init_from` is a finished run whose phases are the first phases of
    `cfg`: training continues from its end (the seed report's Models E and F continue D)
    instead of repeating them. The directory is locked while the run writes it.
    """
    out_dir = Path(out_dir)
    distributed.init()
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir) if distributed.is_main() else contextlib.nullcontext():
        return _train(cfg, out_dir, resume, stop_after_epochs, progress, device, init_from, overwrite)


def _train(cfg, out_dir: Path, resume, stop_after_epochs, progress, device, init_from, overwrite) -> dict[str, float]:
    world = distributed.world_size()
    use_tasks(cfg.tasks)  # the run's task declarations, where every part looks tasks up
    device = torch.device(device) if device else distributed.default_device()
    if world > 1 and any(p.mode == "mlm" for p in cfg.train.phases):
        raise ValueError("MLM phases run in one process; start them without torchrun")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    resume_ckpt = _checkpoint_to_resume(cfg, out_dir) if resume else None
    if not resume and not overwrite and any((out_dir / n).exists() for n in (LAST, "config.yaml")):
        raise RunError(f"{out_dir}: already holds a run; pass --resume to continue it, or --overwrite to start it again")
    set_seed(cfg.train.seed)

    raw = read_all(cfg, needed_splits(cfg))  # fails here, before any long work, on bad data
    model, tokenizer = build_model(cfg)
    data = encode_all(raw, tokenizer, cfg)
    attach_soft_labels(data.get("train", {}), cfg)
    model.to(device)
    if cfg.train.compile:
        model.bert.compile(dynamic=True)  # in place: parameter names stay checkpoint keys
    # DDP: unused heads (one task per step) are expected, hence find_unused_parameters.
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    mlm_tasks = sorted({t for p in cfg.train.phases if p.mode == "mlm" for t in p.tasks})
    if mlm_tasks:
        from minbert.mlm import MaskedLMTask

        data["train"]["mlm"] = MaskedLMTask([data["train"][t] for t in mlm_tasks], model.bert,
                                            tokenizer.mask_id, tokenizer.pad_id)  # fmt: skip
        data["train"]["mlm"].head.to(device)
    mlm_head = data["train"]["mlm"].head if mlm_tasks else None

    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt.model)
        if mlm_head is not None:
            mlm_head.load_state_dict(resume_ckpt.mlm_head)
        state = resume_ckpt.progress
        set_rng_state(resume_ckpt.rng)
        if distributed.is_main():
            truncate_logs(out_dir, state.log_bytes)  # steps after the checkpoint are run, and logged, again
    else:
        state = Progress()
        if distributed.is_main():
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
            for old in out_dir.glob("*-output.csv"):
                old.unlink()
            atomic_write(out_dir / "config.yaml", lambda tmp: save_config(cfg, tmp))
        distributed.barrier()
        if init_from is not None:
            state = _continue_from(Path(init_from), cfg, model, out_dir)
    run = Run(cfg, out_dir, model, net, data, device, state, mlm_head, progress)
    run.streams = {t: TaskStream(t, **state.streams.get(t, {})) for t in data["train"]}
    if any(p.eval_every_steps for p in cfg.train.phases):
        run.probe = dev_probe(raw["dev"], tokenizer, cfg)
    if run.main and cfg.train.tensorboard:
        from minbert.reports.tensorboard import TensorBoardLog

        run.tensorboard = TensorBoardLog(out_dir, state.step)
    sizes = {t: len(d) for t, d in data["train"].items()}
    epochs_this_call = 0

    for phase_idx in range(state.phase, len(cfg.train.phases)):
        phase = cfg.train.phases[phase_idx]
        frozen = phase.mode == "frozen"
        model.bert.requires_grad_(not frozen)
        tasks = ["mlm"] if phase.mode == "mlm" else phase.tasks
        schedules = [
            epoch_schedule(phase.sampler, tasks, sizes, cfg.train.batch_size, e, phase.epochs,
                           phase.steps_per_epoch, cfg.train.seed + phase_idx)
            for e in range(phase.epochs)
        ]  # fmt: skip
        total_steps = sum(len(s) for s in schedules)
        run.optimizer = make_optimizer(model, phase, cfg.train.fused_adamw, mlm_head if phase.mode == "mlm" else None)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_lambda(phase, total_steps))
        run.features = None
        if frozen and cfg.train.cache_features:
            from minbert.features import FrozenFeatures

            run.features = FrozenFeatures(model, data, cfg, device)
        if resume_ckpt is not None and state.phase == phase_idx and (state.epoch or state.step_in_epoch):
            run.optimizer.load_state_dict(resume_ckpt.optimizer)  # a checkpoint taken inside this phase
            run.scheduler.load_state_dict(resume_ckpt.scheduler)
        resume_ckpt = None

        for epoch in range(state.epoch, phase.epochs):
            model.train()
            if frozen:
                model.bert.eval()  # a frozen encoder runs without dropout, as its cached vectors do
            losses = _run_epoch(run, phase, schedules[epoch], desc=f"{phase.name} {epoch + 1}/{phase.epochs}")
            record = {"phase": phase.name, "phase_index": phase_idx, "epoch": epoch + 1, "step": state.step,
                      "train_loss": losses, "elapsed_s": run.elapsed()}  # fmt: skip
            if cfg.train.eval_every_epoch or (phase_idx == len(cfg.train.phases) - 1 and epoch == phase.epochs - 1):
                started = time.time()
                record["dev"] = evaluate_dev(model, data["dev"], cfg, device, run.features)
                _keep_if_best(run, record)
                record["eval_s"] = round(time.time() - started, 1)
            state.history.append(record)
            if run.main:
                with (out_dir / "epochs.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print_epoch(record)
                if run.tensorboard is not None:
                    run.tensorboard.epoch(record)
            state.epoch = epoch + 1
            state.start_epoch()
            if state.epoch == phase.epochs:  # the checkpoint of a finished phase points at the next
                state.phase, state.epoch = phase_idx + 1, 0
            if run.main:
                run.save_last()
            distributed.barrier()
            epochs_this_call += 1
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                if run.tensorboard is not None:
                    run.tensorboard.close()
                return {}
        state.phase, state.epoch = phase_idx + 1, 0  # also for a phase of 0 epochs
    model.bert.requires_grad_(True)
    distributed.barrier()
    # An encoder that never trained still matches its cached vectors: predict from those.
    features = run.features
    encoder_trained = any(p.mode != "frozen" for p in cfg.train.phases)
    if encoder_trained or not cfg.train.cache_features:
        features = None
    elif features is None:  # resumed after the last epoch: nothing cached in this process yet
        from minbert.features import FrozenFeatures

        features = FrozenFeatures(model, data, cfg, device)
    scores = finish(model, data, cfg, out_dir, out_dir / BEST, device, time.time() - run.started, features)
    if run.tensorboard is not None:
        run.tensorboard.close()
    if run.main:  # a picture that cannot be drawn is said, never fails the run
        draw_or_explain(str(out_dir / CURVES), lambda: draw_curves(out_dir))
    return scores


def _keep_if_best(run: Run, record: dict) -> None:
    """Write best.safetensors when the record's full-dev overall beats the best so far."""
    scores, state = record["dev"], run.progress
    if state.best is None or scores["overall"] > state.best:
        state.best = scores["overall"]
        record["best"] = True
        if run.main:
            save_checkpoint(Checkpoint(run.model.state_dict(), to_dict(run.cfg), vars(run.model.bert.config), scores),
                            run.out_dir / BEST)  # fmt: skip


def dev_probe(raw_dev: dict[str, list[Example]], tokenizer: WordPieceTokenizer, cfg: RunConfig) -> dict[str, EncodedTask]:
    """The dev examples scored every eval_every_steps steps of a phase: train.eval_subset of each
    task's dev set (a fixed random choice, the same for every run of a seed), or all of them."""
    chosen = {task: fixed_sample(examples, cfg.train.eval_subset, f"{cfg.train.seed}/dev-probe/{task}")
              for task, examples in raw_dev.items()}  # fmt: skip
    return encode_all({"dev": chosen}, tokenizer, cfg)["dev"]


def _probe(run: Run, phase: PhaseConfig) -> None:
    """A dev evaluation inside an epoch (the phase's eval_every_steps), on the probe examples
    (`dev_probe`). When the probe's overall beats every earlier probe's, the full dev sets are
    scored too, and they decide whether these weights become best.safetensors (so a plateau
    costs few full evaluations). Logged to evals.jsonl; the model is back in training mode after."""
    state, cfg = run.progress, run.cfg
    record = {"phase": phase.name, "phase_index": state.phase, "epoch": state.epoch + 1, "step": state.step,
              "elapsed_s": run.elapsed()}  # fmt: skip
    started = time.time()
    record["probe"] = evaluate_dev(run.model, run.probe, cfg, run.device)
    if state.best_probe is None or record["probe"]["overall"] > state.best_probe:
        state.best_probe = record["probe"]["overall"]
        record["dev"] = evaluate_dev(run.model, run.data["dev"], cfg, run.device)
        _keep_if_best(run, record)
    record["eval_s"] = round(time.time() - started, 1)  # the probe and any full-dev scoring
    run.model.train()
    if run.main:
        with (run.out_dir / "evals.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        probe = record["probe"]["overall"]
        full = f"; full dev {record['dev']['overall']:.4f}" if "dev" in record else ""
        mark = " *best" if record.get("best") else ""
        print(f"[{phase.name} step {state.step}] dev probe {probe:.4f}{full}{mark} | {record['elapsed_s']}s", flush=True)


def _checkpoint_to_resume(cfg: RunConfig, out_dir: Path) -> Checkpoint | None:
    """The checkpoint a resumed run continues from; None when the run stopped before its
    first one (it then starts over). Refuses a checkpoint of another config, naming the keys."""
    if (out_dir / LAST).exists():
        ckpt = load_checkpoint(out_dir / LAST)
        if ckpt.progress is None:
            raise CheckpointError(f"{out_dir / LAST}: holds no training state to resume from")
        saved, where = ckpt.config, out_dir / LAST
    elif (out_dir / "config.yaml").exists():
        ckpt, where = None, out_dir / "config.yaml"
        saved = to_dict(load_config(where))
        print(f"{out_dir}: stopped before its first checkpoint; starting it again", flush=True)
    else:
        raise FileNotFoundError(f"{out_dir / LAST}: nothing to resume from")
    differ = [d for d in config_differences(saved, to_dict(cfg)) if not d.startswith(RESUMABLE_CHANGES)]
    if differ:
        raise ValueError(f"{where}: the run was started with a different config; resume needs the same one. "
                         f"Differences: {'; '.join(differ)}")  # fmt: skip
    return ckpt


def _run_epoch(run: Run, phase: PhaseConfig, schedule: list[str], desc: str) -> dict[str, float]:
    """One epoch (or the rest of one, when resumed mid-epoch): a batch of the scheduled task,
    its loss back-propagated, an optimizer step; a checkpoint whenever one is due."""
    state, cfg = run.progress, run.cfg
    log = StepLog(run)
    start = state.step_in_epoch
    steps = tqdm(schedule[start:], desc=desc, disable=not (run.show_bars and run.main), leave=False,
                 mininterval=2.0, initial=start, total=len(schedule))  # fmt: skip
    for task in steps:
        # Every rank draws the same global batch and trains on its own slice of it.
        indices = run.streams[task].next_indices(run.data["train"][task], cfg.train.batch_size, cfg.train.seed,
                                                 cfg.train.bucket_batches)  # fmt: skip
        mine, weight = distributed.local_share(indices)
        with distributed.autocast(run.device, cfg.train.precision):
            loss = _step_loss(run.net, task, mine, run.data["train"][task], phase, run.features, cfg, run.device,
                              state.step) * weight  # fmt: skip
        if loss.requires_grad:  # a parameter-free head on a frozen encoder has nothing to learn
            loss.backward()
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        lr = run.scheduler.get_last_lr()[0]  # the rate this step used
        run.scheduler.step()
        state.step += 1
        state.step_in_epoch += 1
        log.add(state.step, task, loss.detach(), lr)
        every = phase.eval_every_steps
        if every and phase.mode == "finetune" and state.step_in_epoch % every == 0 and state.step_in_epoch < len(schedule):
            _probe(run, phase)  # the epoch's end is evaluated on the full dev sets anyway
        if len(log.pending) >= cfg.train.log_every_steps:
            log.flush()  # stops here on a non-finite loss, before anything is saved
            # Mid-epoch checkpoints at flush points only: every rank flushes at the same steps.
            if run.main and state.step_in_epoch < len(schedule) and run.timer.due(state.step):
                run.save_last()
    log.flush()
    return {t: round(state.loss_sums[t] / state.loss_counts[t], 5) for t in sorted(state.loss_sums)}


class StepLog:
    """Per-step losses, kept on the device and written in batches (one host sync per flush,
    not per step). A flush stops the run at the first non-finite loss and adds the losses to
    the epoch's sums in `progress`."""

    def __init__(self, run: Run):
        self.run, self.progress = run, run.progress
        self.path = run.out_dir / "steps.jsonl" if run.main else None
        self.pending: list[tuple[int, str, torch.Tensor, float]] = []

    def add(self, step: int, task: str, loss: torch.Tensor, lr: float) -> None:
        self.pending.append((step, task, loss, lr))

    def flush(self) -> None:
        if not self.pending:
            return
        # Each rank's loss is weighted by its share of the batch: their mean is the batch's loss.
        values = distributed.mean_over_ranks(torch.stack([p[2].float() for p in self.pending])).tolist()
        for (step, task, _, _), v in zip(self.pending, values):
            if not math.isfinite(v):
                raise self.run.diverged(f"the {task} loss at step {step} is {v}")
        lines = []
        for (step, task, _, lr), v in zip(self.pending, values):
            self.progress.loss_sums[task] = self.progress.loss_sums.get(task, 0.0) + v
            self.progress.loss_counts[task] = self.progress.loss_counts.get(task, 0) + 1
            lines.append(json.dumps({"step": step, "task": task, "loss": round(v, 5), "lr": lr}) + "\n")
        if self.path is not None:
            with self.path.open("a") as f:
                f.write("".join(lines))
        if self.run.tensorboard is not None:
            self.run.tensorboard.steps([(step, task, v, lr) for (step, task, _, lr), v in zip(self.pending, values)])
        self.pending.clear()


def _step_loss(net, task, indices, data, phase, features, cfg, device, step: int = 0) -> torch.Tensor:
    """The loss of one batch: MLM, heads on cached vectors, heads on a frozen encoder, or all;
    with the task's loss weight, R-Drop, swapped pairs and distillation where configured.
    `net` is the model, or its DDP wrapper (MLM runs in one process only)."""
    if task == "mlm":
        return data.loss(net.bert, indices, device)
    head, weight = head_task(task), cfg.train.loss_weights.get(task, 1.0)
    if features is not None:
        output = net(head, features=features.train(task, indices))
        return task_loss(head, output.float(), data.labels[indices].to(device), cfg.train.sts_loss) * weight
    swap = None
    if cfg.train.swap_pairs and data.cross:  # a coin per (step, example): the same on every DDP rank
        swap = [random.Random(f"{cfg.train.seed}/swap/{step}/{i}").random() < 0.5 for i in indices]
    rdrop = cfg.train.rdrop > 0 and task in cfg.train.rdrop_tasks and phase.mode != "frozen"
    rows = indices + indices if rdrop else indices  # R-Drop: the batch twice, two dropout masks
    batch = data.batch(rows, swap + swap if rdrop and swap else swap).to(device)
    output = net(head, batch, frozen_encoder=phase.mode == "frozen").float()
    loss = task_loss(head, output, batch.labels, cfg.train.sts_loss)
    if data.soft is not None:
        w = cfg.train.distill_weight
        loss = (1 - w) * loss + w * distill_loss(TASKS[head].kind, output, data.soft[rows].to(device))
    if rdrop:
        loss = loss + cfg.train.rdrop * disagreement(TASKS[head].kind, *output.chunk(2))
    return loss * weight


def distill_loss(kind: str, output: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """The loss against a teacher's soft labels: cross-entropy with its class probabilities,
    binary cross-entropy with its P(positive), or the squared error to its score."""
    if kind == "classification":
        return torch.nn.functional.cross_entropy(output, soft)
    if kind == "binary":
        return torch.nn.functional.binary_cross_entropy_with_logits(output, soft)
    return torch.nn.functional.mse_loss(output, soft)


def disagreement(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """R-Drop's term between two forwards of one batch: the symmetric KL divergence of their
    class distributions (a binary logit is the two-class distribution [0, logit]), or the
    squared difference of their scores."""
    if kind == "regression":
        return torch.nn.functional.mse_loss(a, b)
    if kind == "binary":
        a, b = (torch.stack([torch.zeros_like(x), x], dim=-1) for x in (a, b))
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    kl = torch.nn.functional.kl_div
    return 0.5 * (kl(la, lb, log_target=True, reduction="batchmean") + kl(lb, la, log_target=True, reduction="batchmean"))


def cosent_loss(scores: torch.Tensor, labels: torch.Tensor, scale: float = 20.0,
                span: tuple[float, float] = (0.0, 5.0)) -> torch.Tensor:  # fmt: skip
    """CoSENT (Su 2022): log(1 + sum over pairs with y_i > y_j of exp(scale (s_j - s_i))).
    A ranking loss on the predicted scores, mapped from `span` (STS-B's [0, 5]) onto [0, 1]."""
    low, high = span
    s = scores / (high - low) if low == 0 else (scores - low) / (high - low)
    diff = scale * (s[None, :] - s[:, None])  # (B, B): s_j - s_i at [i, j]
    diff = diff.masked_fill(~(labels[:, None] > labels[None, :]), float("-inf"))
    return torch.logsumexp(torch.cat([torch.zeros(1, device=s.device, dtype=s.dtype), diff.flatten()]), dim=0)


def task_loss(task: str, output: torch.Tensor, labels: torch.Tensor, sts_loss: str = "mse") -> torch.Tensor:
    """The task's declared loss; for a regression task, CoSENT instead of or added to MSE when
    declared (`loss: cosent | mse+cosent`), or for STS when train.sts_loss says so."""
    spec = TASKS[task]
    name = sts_loss if task == "sts" and spec.loss_name == "mse" else spec.loss_name
    loss = spec.loss(output, labels)
    if name in ("cosent", "mse+cosent"):
        cosent = cosent_loss(output, labels, scale=20.0, span=spec.value_range)
        loss = cosent if name == "cosent" else loss + cosent
    return loss


def evaluate_dev(model, dev, cfg, device, features=None) -> dict[str, float]:
    preds = {
        task: predict(model, task, dev[task], cfg.train.eval_batch_size,
                      features.split_fn("dev", task) if features else None, device, cfg.train.precision)  # fmt: skip
        for task in dev
    }
    return dev_scores(preds, dev)


def finish(model, data, cfg, out_dir, best_path, device, elapsed: float, features=None) -> dict[str, float]:
    """Reload the best checkpoint, score it on dev, write the prediction files and metrics.json
    (scores only, so that two runs of one config and seed give identical files; the wall time
    goes to timing.json)."""
    if best_path.exists():
        model.load_state_dict(load_checkpoint(best_path).model)
    model.to(device)
    scores = write_outputs(model, data, cfg, out_dir, device, features)
    if distributed.is_main():
        metrics = json.dumps({**scores, "overall_formula": overall_formula(data["dev"])}, indent=2) + "\n"
        atomic_write(out_dir / "metrics.json", lambda tmp: tmp.write_text(metrics))
        timing = json.dumps({"train_wall_s": round(elapsed, 1)}) + "\n"
        atomic_write(out_dir / "timing.json", lambda tmp: tmp.write_text(timing))
        print_history(out_dir / "epochs.jsonl")
    return {**scores, "train_wall_s": round(elapsed, 1)}


def print_history(epochs_file: Path) -> None:
    """The per-epoch dev scores as a short table."""
    if not epochs_file.exists():
        return
    records = [json.loads(line) for line in epochs_file.read_text().splitlines()]
    names = next((list(r["dev"]) for r in records if r.get("dev")), ["overall"])
    widths = {k: max(9, len(k) + 2) for k in names}
    print(f"{'phase':<20}{'epoch':>6}" + "".join(f"{k:>{widths[k]}}" for k in names))
    for r in records:
        cols = "".join(f"{r['dev'][k]:>{widths[k]}.3f}" for k in names) if r.get("dev") else ""
        print(f"{r['phase']:<20}{r['epoch']:>6}{cols}{'  *' if r.get('best') else ''}")


def write_outputs(model, data, cfg, out_dir: Path, device, features=None, layout: str = "csv") -> dict[str, float]:
    """Dev predictions (scored) and, where loaded, test predictions, as the six files (`layout`:
    see evaluation.write_predictions). Everything is predicted (and checked finite) before the
    first file is written."""
    preds = {
        (split, task): predict(model, task, encoded, cfg.train.eval_batch_size,
                               features.split_fn(split, task) if features else None, device, cfg.train.precision)
        for split in ("dev", "test") for task, encoded in data.get(split, {}).items()
    }  # fmt: skip
    scores = dev_scores({task: p for (split, task), p in preds.items() if split == "dev"}, data["dev"])
    if distributed.is_main():
        for (split, task), p in preds.items():
            write_predictions(prediction_path(out_dir, task, split), data[split][task].ids, p, task, layout)
    return {k: round(v, 4) for k, v in scores.items()}


def print_epoch(record: dict) -> None:
    dev = record.get("dev", {})
    losses = " ".join(f"{t}={v:.3f}" for t, v in record["train_loss"].items())
    cols = " ".join(f"{k} {v:.3f}" for k, v in dev.items())
    mark = " *best" if record.get("best") else ""
    print(f"[{record['phase']} epoch {record['epoch']}] loss {losses} | dev {cols}{mark} | {record['elapsed_s']}s", flush=True)


def _continue_from(init_dir: Path, cfg: RunConfig, model: MultitaskBert, out_dir: Path) -> Progress:
    """Load a finished run whose phases are a prefix of cfg's; return the state to go on from."""
    ckpt = load_checkpoint(init_dir / LAST)
    done = ckpt.config["train"]["phases"]
    ours = to_dict(cfg)
    if ckpt.progress is None or ckpt.progress.phase != len(done):
        raise ValueError(f"{init_dir}: that run has not finished its phases; resume it first")
    same = {k: v for k, v in ckpt.config["train"].items() if k != "phases"} == {
        k: v for k, v in ours["train"].items() if k != "phases"
    }
    if ours["train"]["phases"][: len(done)] != done or ckpt.config["model"] != ours["model"] or not same \
            or ckpt.config["data"] != ours["data"]:  # fmt: skip
        raise ValueError(f"{init_dir}: its config is not the first {len(done)} phase(s) of this one")
    model.load_state_dict(ckpt.model)
    set_rng_state(ckpt.rng)
    if (init_dir / BEST).exists():
        shutil.copyfile(init_dir / BEST, out_dir / BEST)
    for name in LOGS:
        if (init_dir / name).exists():
            shutil.copyfile(init_dir / name, out_dir / name)
    return ckpt.progress


def load_trained(checkpoint_path: str | Path, overrides: list[str] = ()) -> tuple[MultitaskBert, WordPieceTokenizer, RunConfig]:
    """A model saved by `train` (a run directory, its best.safetensors or last.safetensors),
    with its config (overrides apply, e.g. data.dir)."""
    return build_trained(load_checkpoint(checkpoint_path), overrides, checkpoint_path)


def build_trained(ckpt: Checkpoint, overrides: list[str], checkpoint_path: str | Path) -> tuple[MultitaskBert, WordPieceTokenizer, RunConfig]:
    """The model, tokenizer and config of a checkpoint already read (see load_trained)."""
    cfg = load_config(None, overrides, base=ckpt.config)
    try:
        model, tokenizer = build_model(cfg, ckpt.bert_config)
        model.load_state_dict(ckpt.model)
    except (TypeError, RuntimeError) as e:  # a bert_config or weights that do not fit together
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{checkpoint_path}: the weights do not fit the model they describe ({first})") from None
    return model, tokenizer, cfg


def predict_checkpoint(checkpoint_path, overrides=(), out_dir: Path | None = None, progress=True, device=None,
                       layout: str = "csv") -> dict:  # fmt: skip
    """Dev scores of a saved model; with out_dir, also the six prediction files there, in `layout`."""
    device = torch.device(device) if device else distributed.default_device()
    model, tokenizer, cfg = load_trained(checkpoint_path, list(overrides))
    data = encode_all(read_all(cfg, needed_splits(cfg, train=False, test=out_dir is not None)), tokenizer, cfg)
    model.to(device)
    if out_dir is None:
        return {k: round(v, 4) for k, v in evaluate_dev(model, data["dev"], cfg, device).items()}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write_outputs(model, data, cfg, Path(out_dir), device, layout=layout)
