"""Where a run stands, and how it gets there: `Run` (what the recipe's parts share), and `start`,
which makes a run ready for its first step: fresh (its directory cleaned, its config written),
resumed from its last checkpoint (`--resume`), or continued from a finished run whose phases
are the first of this one (`--init-from`). What a checkpoint holds is minbert/run_files.py.
`check_data` compares the data files with the fingerprints the run recorded (data.json, its
checkpoints) before any long work: changed data is refused unless data.allow_changed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from minbert import distributed
from minbert.checkpoint import CheckpointError
from minbert.config import ConfigError, RunConfig, load_config, save_config, to_dict, with_precision
from minbert.multitask import MultitaskBert
from minbert.reports.plots import CURVES, DEV_OUTPUTS, EVALUATION_PICTURES
from minbert.run_files import (BEST, LAST, Checkpoint, Progress, RunError, atomic_write, checked_fingerprints,
                               checkpoint_data, load_checkpoint, save_checkpoint)  # fmt: skip
from minbert.runs import Encoded, Raw, data_fingerprints, needed_splits
from minbert.tasks.data import (data_changes, length_bucketed_batches, load_soft_labels, resolve_data_dir,
                                soft_labels_path)  # fmt: skip
from minbert.tasks.encoding import EncodedTask
from minbert.tokenizer import WordPieceTokenizer
from minbert.training.run_state import CheckpointTimer, config_differences, log_sizes, rng_state, set_rng_state, truncate_logs
from minbert.training.stopping import EvalCallbackStop, Stopper, TrainingStopped

LOGS = ("steps.jsonl", "epochs.jsonl", "evals.jsonl")
# data.json: the fingerprints of the data files the run reads now. events.jsonl: what happened to
# the run beside its steps (data that changed and was accepted; early stopping); never cut back on resume.
DATA_FILE, EVENTS = "data.json", "events.jsonl"
# Keys that may change when a run is resumed: they decide when files are written (and how
# many threads compute), or whether changed data is accepted, not what is computed.
RESUMABLE_CHANGES = ("train.checkpoint_every_steps", "train.checkpoint_every_minutes", "train.log_every_steps",
                     "train.threads", "train.tensorboard", "train.ddp_timeout_s", "data.allow_changed")  # fmt: skip
RUN_FILES = (LAST, BEST, "metrics.json", "timing.json", "config.yaml", DATA_FILE, EVENTS, *LOGS,
             CURVES, DEV_OUTPUTS, *EVALUATION_PICTURES.values())  # fmt: skip


@dataclass
class TrainOptions:
    """How `train` runs a config, beside what the config computes.

    `resume`: continue from out_dir/last.safetensors (or start over if the run stopped before its
    first checkpoint). `init_from`: a finished run whose phases are the first phases of the
    config: training continues from its end (the seed report's Models E and F continue D).
    `overwrite`: a fresh run may replace a run in out_dir. `progress`: progress bars. `device`:
    default CUDA where available (the local rank's under torchrun), else the CPU.
    `stop_after_epochs`: stop after that many epochs of this call, as an interruption would
    (how the tests interrupt a run at an exact point). `on_eval`: called after each dev
    evaluation (an epoch's end, a probe) with its record (`kind`: "epoch" or "probe", `step`, and
    `dev` and/or `probe` scores); an exception it raises stops the run as a signal would (last.safetensors
    at this step, a note in events.jsonl), then `train` raises it (how `minbert sweep` prunes). One process only."""

    resume: bool = False
    init_from: str | Path | None = None
    overwrite: bool = False
    progress: bool = True
    device: str | torch.device | None = None
    stop_after_epochs: int | None = None
    on_eval: Callable[[dict], None] | None = None


@dataclass
class TaskStream:
    """One task's training set, reshuffled (length-bucketed) at each pass, drawn batch by batch."""

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


@dataclass
class Run:
    """What the recipe's parts share: config, model, data, and where the run stands."""

    cfg: RunConfig
    out_dir: Path
    model: MultitaskBert
    net: torch.nn.Module  # the model, or its DDP wrapper
    data: Encoded
    device: torch.device
    progress: Progress
    mlm_head: torch.nn.Module | None
    options: TrainOptions
    started: float = field(default_factory=time.time)  # this process's start
    streams: dict[str, TaskStream] = field(default_factory=dict)
    features: object | None = None  # FrozenFeatures, in a frozen phase with cached vectors
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    timer: CheckpointTimer | None = None
    tensorboard: object | None = None  # a TensorBoardLog on rank 0 when train.tensorboard
    probe: dict[str, EncodedTask] | None = None  # the dev examples of eval_every_steps (probes.dev_probe)
    resumed_from: Checkpoint | None = None  # until the phase it was taken in has its optimizer state back
    epochs_this_call: int = 0
    stopper: Stopper = field(default_factory=lambda: Stopper(immediate=True))  # SIGTERM/SIGINT (train enters it)
    data_files: dict[str, dict] = field(default_factory=dict)  # fingerprints of the files read (DataRecord)

    def __post_init__(self) -> None:
        self.earlier_s = self.progress.elapsed_s  # training time of earlier processes (resumed runs)
        self.saved_step = self.progress.step  # the step of out_dir/last.safetensors, if there is one
        self.timer = CheckpointTimer(self.cfg.train.checkpoint_every_steps, self.cfg.train.checkpoint_every_minutes)
        self.timer.reset(self.progress.step)

    @classmethod
    def bare(cls, cfg: RunConfig, model: MultitaskBert, train: dict[str, EncodedTask], net: torch.nn.Module | None = None,
             step: int = 0) -> "Run":  # fmt: skip
        """A run with no directory and no history, at `step`, on the CPU: what loop.step_loss needs
        to compute one batch's loss outside the loop (tests and benchmarks do)."""
        progress = Progress(step=step)
        return cls(cfg, Path("."), model, net or model, {"train": train}, torch.device("cpu"), progress, None,
                   TrainOptions(progress=False))  # fmt: skip

    @property
    def main(self) -> bool:
        return distributed.is_main()

    @property
    def show_bars(self) -> bool:
        return self.options.progress

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
            self.mlm_head.state_dict() if self.mlm_head is not None else None, self.data_files),
            self.out_dir / LAST)  # fmt: skip
        self.saved_step = self.progress.step
        self.timer.reset(self.progress.step)

    def save_best(self, scores: dict[str, float]) -> None:
        """best.safetensors: these weights, their config and dev scores (rank 0 only)."""
        save_checkpoint(Checkpoint(self.model.state_dict(), to_dict(self.cfg), vars(self.model.bert.config), scores,
                                   data=self.data_files), self.out_dir / BEST)  # fmt: skip

    def diverged(self, what: str) -> RunError:
        return RunError(f"training diverged: {what}; stopped with no predictions written; {self.kept()}")

    def lost_rank(self, error: RuntimeError, lost: list[int] | None) -> RunError:
        """A collective failed (torchrun): which ranks did not answer, and what is kept."""
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        reason = re.sub(r"^\[[^\]]*\]\s*", "", reason)  # gloo's and NCCL's "[source file:line]"
        who = f"rank {', '.join(map(str, lost))} of {distributed.world_size()} is lost" if lost else "a rank is lost"
        return RunError(f"{who}: a collective failed after step {self.progress.step} ({reason}); this rank "
                        f"(rank {distributed.rank()}) stops; {self.kept()}; start the run again with --resume")  # fmt: skip

    def kept(self) -> str:
        last = self.out_dir / LAST
        return f"{last} (step {self.saved_step}) is intact" if last.exists() else "no checkpoint had been written yet"

    def save_on_stop(self) -> TrainingStopped:
        """After a stop was asked for: last.safetensors at this step, unless it holds it already
        (rank 0 writes; every rank waits for it)."""
        self.save_here()
        return self.stopper.stopped(self.saved_step, self.out_dir / LAST)

    def save_here(self) -> None:
        """last.safetensors at this step, unless it holds it already (rank 0 writes)."""
        if self.progress.step > self.saved_step:  # steps were made in this process since the last one
            if self.main:
                self.save_last()
            self.saved_step = self.progress.step
        distributed.barrier()

    def report_eval(self, kind: str, record: dict) -> None:
        """Hand a dev evaluation's record to options.on_eval; what it raises stops the run."""
        if self.options.on_eval is None:
            return
        try:
            self.options.on_eval({"kind": kind, **record})
        except Exception as e:
            raise EvalCallbackStop(e) from e

    def stopped_by_callback(self, stop: EvalCallbackStop) -> None:
        """After on_eval raised: last.safetensors at this step, and events.jsonl says why."""
        self.save_here()
        if self.main:
            add_event(self.out_dir, {"event": "stopped", "by": "on_eval", "step": self.progress.step,
                                     "reason": f"{type(stop.cause).__name__}: {stop.cause}"})  # fmt: skip


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Before any work: what to resume from, and what a fresh run may replace


def launch_checks(cfg: RunConfig, out_dir: Path, options: TrainOptions) -> Checkpoint | None:
    """Refuse what cannot run (MLM under torchrun; a fresh run over an existing one) and set the
    thread count; return the checkpoint a resumed run continues from (None: none, or fresh)."""
    if distributed.world_size() > 1 and any(p.mode == "mlm" for p in cfg.train.phases):
        raise ValueError("MLM phases run in one process; start them without torchrun")
    if cfg.train.compile_mode == "reduce-overhead" and _device(options).type != "cuda":
        raise ConfigError(f"train.compile_mode: 'reduce-overhead' records CUDA graphs and needs a CUDA device; this "
                          f"run's device is {_device(options)} (use compile_mode 'default' there)")  # fmt: skip
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    resume_ckpt = checkpoint_to_resume(cfg, out_dir) if options.resume else None
    if not options.resume and not options.overwrite and any((out_dir / n).exists() for n in (LAST, "config.yaml")):
        raise RunError(f"{out_dir}: already holds a run; pass --resume to continue it, or --overwrite to start it again")
    return resume_ckpt


def settle_precision(cfg: RunConfig, out_dir: Path, options: TrainOptions) -> RunConfig:
    """`cfg` with train.precision resolved and said in one line ("precision: bf16 (the CPU has
    AMX)"): "auto" becomes bf16 where the device has native bf16, fp32 elsewhere
    (`distributed.resolve_precision`); a resumed run keeps the precision it started with. The
    resolved value is what config.yaml, the checkpoints, timing.json and the model card record."""
    precision, why = cfg.train.precision, None
    if precision == "auto" and options.resume:
        started = _started_precision(out_dir, _device(options))
        if started is not None:
            precision, why = started, "as the run started"
    if why is None:
        precision, why = distributed.resolve_precision(_device(options), precision)
    if distributed.is_main():
        print(f"precision: {precision} ({why})", flush=True)
    return with_precision(cfg, precision)


def _started_precision(out_dir: Path, device: torch.device) -> str | None:
    """The precision recorded in a run's config.yaml (None: no run there yet). A run of an older
    minbert recorded "auto", which meant bf16 on CUDA and fp32 on the CPU."""
    try:
        saved = yaml.safe_load((out_dir / "config.yaml").read_text(encoding="utf-8"))
        recorded = saved["train"].get("precision", "auto")
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None  # no readable config.yaml: checkpoint_to_resume says what is wrong, or starts the run
    if recorded == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return recorded if recorded in distributed.PRECISIONS else None


def _device(options: TrainOptions) -> torch.device:
    return torch.device(options.device) if options.device else distributed.default_device()


def compile_encoder(model: MultitaskBert, cfg: RunConfig) -> None:
    """torch.compile the encoder in place (parameter names stay checkpoint keys), in
    train.compile_mode: with length buckets, static shapes (one graph per batch shape, train and
    eval mode apart, enough of them allowed); without, dynamic shapes (batches vary in length)."""
    buckets = cfg.train.length_buckets
    if buckets:
        import torch._dynamo

        # Shapes a run can meet: each bucket (and max_length) x {a full batch, a pass's last
        # partial one per task, eval batches} x {train, eval}; a bound, beyond which dynamo
        # would run the encoder uncompiled.
        limit = 4 * (len(buckets) + 1) * (len(cfg.tasks) + 3)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    model.bert.compile(dynamic=not buckets, mode=cfg.train.compile_mode)


def checkpoint_to_resume(cfg: RunConfig, out_dir: Path) -> Checkpoint | None:
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


@dataclass
class DataRecord:
    """The fingerprints of the files a run reads (from here on, the recorded ones), and the
    changes since they were recorded that data.allow_changed went on with."""

    files: dict[str, dict]
    accepted: list[str] = field(default_factory=list)
    where: str = ""  # the record they differ from, and how: the head of the note


def check_data(cfg: RunConfig, out_dir: Path, options: TrainOptions, resume_ckpt: Checkpoint | None) -> DataRecord:
    """Fingerprint every file the run reads; on --resume and --init-from, compare with what was
    recorded: the run's last checkpoint (its data.json if it stopped before one), or the last
    checkpoint of the run it continues. A change is a ValueError naming each file and what
    changed, unless data.allow_changed; a record without fingerprints (an older minbert's) is
    said in one line, and the run goes on."""
    files = data_fingerprints(cfg, needed_splits(cfg))
    if options.resume:
        where = out_dir / (LAST if resume_ckpt is not None else DATA_FILE)
        recorded = resume_ckpt.data if resume_ckpt is not None else _read_data_file(where)
        what, common_only = "the run's data changed since it started", False
    elif options.init_from is not None:
        where = Path(options.init_from) / LAST
        recorded = checkpoint_data(where)
        what, common_only = "this run's data differs from the data of the run it continues", True
    else:
        return DataRecord(files)
    if recorded is None:
        print(f"{where}: holds no fingerprints of the run's data (an older minbert's): the data cannot be checked; "
              "going on, and recording them from here", flush=True)  # fmt: skip
        return DataRecord(files)
    changes = data_changes(recorded, files, resolve_data_dir(cfg.data.dir), common_only)
    if changes and not cfg.data.allow_changed:
        raise ValueError(f"{where}: {what}: {'; '.join(changes)}; pass --data.allow_changed=true to go on with the "
                         "new data")  # fmt: skip
    return DataRecord(files, changes, f"{where}: {what}")


def _read_data_file(path: Path) -> dict[str, dict] | None:
    """A run directory's data.json (None where there is none: a run of an older minbert)."""
    if not path.exists():
        return None
    try:
        return checked_fingerprints(json.loads(path.read_text()), str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def record_data(out_dir: Path, record: DataRecord, step: int) -> None:
    """data.json: the fingerprints of the files read now; and, where data.allow_changed went on
    with changed data, a line saying so and an `events.jsonl` record (rank 0 only)."""
    if not distributed.is_main():
        return
    text = json.dumps(record.files, indent=2) + "\n"
    atomic_write(out_dir / DATA_FILE, lambda tmp: tmp.write_text(text))
    if record.accepted:
        print(f"{record.where}: {'; '.join(record.accepted)}; going on with the new data (data.allow_changed=true), "
              f"noted in {out_dir / EVENTS}", flush=True)  # fmt: skip
        add_event(out_dir, {"event": "data_changed", "step": step, "allowed_by": "data.allow_changed=true",
                            "changes": record.accepted, "data": record.files})  # fmt: skip


def add_event(out_dir: Path, event: dict) -> None:
    """One more line of the run's events.jsonl (written whole, atomically)."""
    earlier = (out_dir / EVENTS).read_text() if (out_dir / EVENTS).exists() else ""
    atomic_write(out_dir / EVENTS, lambda tmp: tmp.write_text(earlier + json.dumps(event) + "\n"))


def attach_soft_labels(train: dict[str, EncodedTask], cfg: RunConfig) -> None:
    """Distillation: every training task with soft labels in cfg.train.distill_from (a directory
    written by `minbert ensemble --soft-labels`) gets the teacher's, aligned by example id."""
    if not cfg.train.distill_from:
        return
    folder = Path(cfg.train.distill_from)
    found = [t for t in train if soft_labels_path(folder, t).is_file()]
    if not found:
        raise ConfigError(f"train.distill_from: {folder} holds no soft labels for the run's training tasks "
                          f"{tuple(train)} (write them with minbert ensemble ... --soft-labels TASK,...)")  # fmt: skip
    for task in found:
        train[task].soft = load_soft_labels(folder, task, train[task].ids)


# ---------------------------------------------------------------------------------------
# Ready for the first step


def start(cfg: RunConfig, out_dir: Path, model: MultitaskBert, tokenizer: WordPieceTokenizer, data: tuple[Raw, Encoded],
          options: TrainOptions, resume_ckpt: Checkpoint | None) -> Run:  # fmt: skip
    """The model on its device (compiled, DDP-wrapped where configured), the MLM task where a
    phase needs it, then the run's state: resumed, continued (init_from) or fresh. `data` is the
    raw examples (for the probes), their encoding and the files' DataRecord (check_data). (7
    parameters: what the recipe has built so far, each once.)"""
    raw, encoded, record = data
    device = _device(options)
    model.to(device)
    if cfg.train.compile:
        compile_encoder(model, cfg)
    # DDP: unused heads (one task per step) are expected, hence find_unused_parameters.
    world = distributed.world_size()
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    mlm_head = _add_mlm_task(cfg, model, tokenizer, encoded, device)
    if resume_ckpt is not None:
        state = _resume(resume_ckpt, model, mlm_head, out_dir)
    else:
        state = _fresh(cfg, out_dir, model, options.init_from)
    record_data(out_dir, record, state.step)
    run = Run(cfg, out_dir, model, net, encoded, device, state, mlm_head, options, resumed_from=resume_ckpt,
              data_files=record.files)  # fmt: skip
    run.streams = {t: TaskStream(t, **state.streams.get(t, {})) for t in encoded["train"]}
    if any(p.eval_every_steps for p in cfg.train.phases):
        from minbert.training.probes import dev_probe

        run.probe = dev_probe(raw["dev"], tokenizer, cfg)
    if run.main and cfg.train.tensorboard:
        from minbert.training.logs import TensorBoardLog

        run.tensorboard = TensorBoardLog(out_dir, state.step)
    return run


def _add_mlm_task(cfg: RunConfig, model: MultitaskBert, tokenizer: WordPieceTokenizer, data: Encoded, device):
    """data["train"]["mlm"]: the MLM phases' sentences, with the MLM head (returned; None without MLM)."""
    mlm_tasks = sorted({t for p in cfg.train.phases if p.mode == "mlm" for t in p.tasks})
    if not mlm_tasks:
        return None
    from minbert.training.mlm import MaskedLMTask

    data["train"]["mlm"] = MaskedLMTask([data["train"][t] for t in mlm_tasks], model.bert,
                                        tokenizer.mask_id, tokenizer.pad_id)  # fmt: skip
    data["train"]["mlm"].head.to(device)
    return data["train"]["mlm"].head


def _resume(ckpt: Checkpoint, model: MultitaskBert, mlm_head, out_dir: Path) -> Progress:
    """Weights, MLM head and RNG states from the checkpoint; logs cut back to it."""
    model.load_state_dict(ckpt.model)
    if mlm_head is not None:
        mlm_head.load_state_dict(ckpt.mlm_head)
    set_rng_state(ckpt.rng)
    if distributed.is_main():
        truncate_logs(out_dir, ckpt.progress.log_bytes)  # steps after the checkpoint are run, and logged, again
    return ckpt.progress


def _fresh(cfg: RunConfig, out_dir: Path, model: MultitaskBert, init_from: str | Path | None) -> Progress:
    """A directory cleaned of an earlier run's files, the config written; the state of the run
    continued from (init_from), or a new one."""
    if distributed.is_main():
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for old in out_dir.glob("*-output.csv"):
            old.unlink()
        atomic_write(out_dir / "config.yaml", lambda tmp: save_config(cfg, tmp))
    distributed.barrier()
    if init_from is None:
        return Progress()
    return continue_from(Path(init_from), cfg, model, out_dir)


def continue_from(init_dir: Path, cfg: RunConfig, model: MultitaskBert, out_dir: Path) -> Progress:
    """Load a finished run whose phases are a prefix of cfg's; return the state to go on from."""
    ckpt = load_checkpoint(init_dir / LAST)
    done = ckpt.config["train"]["phases"]
    ours = to_dict(cfg)
    if ckpt.progress is not None and ckpt.progress.stopped_early is not None:
        raise ValueError(f"{init_dir}: that run stopped early (train.early_stopping, after step "
                         f"{ckpt.progress.stopped_early['step']}): its phases did not all run, so it cannot be continued")  # fmt: skip
    if ckpt.progress is None or ckpt.progress.phase != len(done):
        raise ValueError(f"{init_dir}: that run has not finished its phases; resume it first")
    same = {k: v for k, v in ckpt.config["train"].items() if k != "phases"} == {
        k: v for k, v in ours["train"].items() if k != "phases"
    }
    data = [{k: v for k, v in c["data"].items() if k != "allow_changed"} for c in (ckpt.config, ours)]
    if ours["train"]["phases"][: len(done)] != done or ckpt.config["model"] != ours["model"] or not same \
            or data[0] != data[1]:  # fmt: skip
        raise ValueError(f"{init_dir}: its config is not the first {len(done)} phase(s) of this one")
    model.load_state_dict(ckpt.model)
    set_rng_state(ckpt.rng)
    if (init_dir / BEST).exists():
        shutil.copyfile(init_dir / BEST, out_dir / BEST)
    for name in (*LOGS, EVENTS):
        if (init_dir / name).exists():
            shutil.copyfile(init_dir / name, out_dir / name)
    return ckpt.progress
