"""The training loop: a phase (its optimizer, schedule and epochs), an epoch (sampled task
batches, one optimizer step each, checkpoints when due), and one step's loss.

A step's batch is train.grad_accum_steps micro-batches of train.batch_size, their gradients
summed before the step (clipped to train.max_grad_norm where set); train.early_stopping ends
the training when the dev evaluations stop improving (probes.count_patience).

A phase's epochs are lists of task names (training/samplers.py); each step draws the next batch
of that task's stream (state.TaskStream). Dev scores at each epoch's end decide best.safetensors
(probes.keep_if_best); last.safetensors is written at each epoch's end and when the timer says.
"""

from __future__ import annotations

import contextlib
import random
import time

import torch
from tqdm import tqdm

from minbert import distributed
from minbert.config import PhaseConfig
from minbert.multitask import MultitaskBert
from minbert.runs import evaluate_dev
from minbert.tasks.losses import disagreement, distill_loss, task_loss
from minbert.tasks.encoding import Batch
from minbert.training.logs import StepLog, append_record, print_epoch
from minbert.training.prefetch import Prefetcher
from minbert.training.probes import keep_if_best, probe
from minbert.training.samplers import epoch_schedule
from minbert.training.state import Run, add_event
from minbert.training.stopping import StopRequested


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


def run_phase(run: Run, phase_idx: int) -> bool:
    """The phase's remaining epochs (all, or the rest of a resumed one); False when the run is to
    stop here (options.stop_after_epochs), True when the phase is done."""
    cfg, model, state = run.cfg, run.model, run.progress
    phase = cfg.train.phases[phase_idx]
    frozen = phase.mode == "frozen"
    model.bert.requires_grad_(not frozen)
    tasks = ["mlm"] if phase.mode == "mlm" else phase.tasks
    sizes = {t: len(d) for t, d in run.data["train"].items()}
    batch = cfg.train.batch_size * cfg.train.grad_accum_steps  # a step's global batch: its micro-batches together
    schedules = [
        epoch_schedule(phase.sampler, {t: sizes[t] for t in tasks}, batch, cfg.train.seed + phase_idx,
                       (e, phase.epochs), phase.steps_per_epoch)
        for e in range(phase.epochs)
    ]  # fmt: skip
    total_steps = sum(len(s) for s in schedules)
    run.optimizer = make_optimizer(model, phase, cfg.train.fused_adamw, run.mlm_head if phase.mode == "mlm" else None)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_lambda(phase, total_steps))
    run.features = None
    if frozen and cfg.train.cache_features:
        from minbert.training.features import FrozenFeatures

        run.features = FrozenFeatures(model, run.data, cfg, run.device)
    ckpt = run.resumed_from
    if ckpt is not None and state.phase == phase_idx and (state.epoch or state.step_in_epoch):
        run.optimizer.load_state_dict(ckpt.optimizer)  # a checkpoint taken inside this phase
        run.scheduler.load_state_dict(ckpt.scheduler)
    run.resumed_from = None

    for epoch in range(state.epoch, phase.epochs):
        model.train()
        if frozen:
            model.bert.eval()  # a frozen encoder runs without dropout, as its cached vectors do
        losses = run_epoch(run, phase, schedules[epoch], desc=f"{phase.name} {epoch + 1}/{phase.epochs}")
        if state.stopped_early is None:  # not stopped by a probe inside the epoch
            end_epoch(run, phase_idx, epoch, losses)
            run.epochs_this_call += 1
        if state.stopped_early is not None:
            announce_early_stop(run)
            return True  # the run finishes now (recipe._train_and_finish)
        if run.options.stop_after_epochs is not None and run.epochs_this_call >= run.options.stop_after_epochs:
            return False
    state.phase, state.epoch = phase_idx + 1, 0  # also for a phase of 0 epochs
    return True


def end_epoch(run: Run, phase_idx: int, epoch: int, losses: dict[str, float]) -> None:
    """The epoch's record (losses; dev scores where evaluated, and the best checkpoint) logged,
    the counters moved on, last.safetensors written."""
    cfg, state = run.cfg, run.progress
    phase = cfg.train.phases[phase_idx]
    record = {"phase": phase.name, "phase_index": phase_idx, "epoch": epoch + 1, "step": state.step,
              "train_loss": losses, "elapsed_s": run.elapsed()}  # fmt: skip
    if cfg.train.eval_every_epoch or (phase_idx == len(cfg.train.phases) - 1 and epoch == phase.epochs - 1):
        started = time.time()
        record["dev"] = evaluate_dev(run.model, run.data["dev"], cfg, run.device, run.features)  # a stop here: redone on resume
    with run.stopper.hold():
        if "dev" in record:
            keep_if_best(run, record)
            record["eval_s"] = round(time.time() - started, 1)
        _close_epoch(run, phase_idx, epoch, record)
    distributed.barrier()
    if "dev" in record:
        run.report_eval("epoch", record)  # after last.safetensors: a stop it asks for loses nothing


def _close_epoch(run: Run, phase_idx: int, epoch: int, record: dict) -> None:
    """The epoch's record logged, the counters moved on, last.safetensors written."""
    state, phase = run.progress, run.cfg.train.phases[phase_idx]
    state.history.append(record)
    if run.main:
        append_record(run.out_dir / "epochs.jsonl", record)
        print_epoch(record)
        if run.tensorboard is not None:
            run.tensorboard.epoch(record)
    state.epoch = epoch + 1
    state.start_epoch()
    if state.epoch == phase.epochs:  # the checkpoint of a finished phase points at the next
        state.phase, state.epoch = phase_idx + 1, 0
    if run.main:
        run.save_last()


def run_epoch(run: Run, phase: PhaseConfig, schedule: list[str], desc: str) -> dict[str, float]:
    """One epoch (or the rest of one, when resumed mid-epoch): a batch of the scheduled task,
    its loss back-propagated, an optimizer step; a checkpoint whenever one is due. Each step
    (and each log flush and checkpoint) runs to its end once begun: a stop asked for by a
    signal (training/stopping.py) takes effect between them, the steps so far logged."""
    state, cfg, stopper = run.progress, run.cfg, run.stopper
    log = StepLog(run)
    start = state.step_in_epoch
    steps = tqdm(schedule[start:], desc=desc, disable=not (run.show_bars and run.main), leave=False,
                 mininterval=2.0, initial=start, total=len(schedule))  # fmt: skip
    prefetch = make_prefetcher(run, phase, schedule, start)
    try:
        if state.probe_due:  # stopped in this probe: it is run again before the next step
            probe(run, phase)
        for task in steps:
            if state.stopped_early is not None:  # a probe stopped training (train.early_stopping)
                break
            with stopper.hold():
                train_step(run, phase, task, log, prefetch)
            every = phase.eval_every_steps
            if every and phase.mode == "finetune" and state.step_in_epoch % every == 0 and state.step_in_epoch < len(schedule):
                probe(run, phase)  # the epoch's end is evaluated on the full dev sets anyway
            if len(log.pending) >= cfg.train.log_every_steps:
                with stopper.hold():
                    log.flush()  # stops here on a non-finite loss, before anything is saved
                    # Mid-epoch checkpoints at flush points only: every rank flushes at the same steps.
                    if run.main and state.step_in_epoch < len(schedule) and run.timer.due(state.step):
                        run.save_last()
            stopper.check_boundary()
    except StopRequested:
        log.flush()  # the steps done are logged before last.safetensors records the logs' sizes
        raise
    finally:
        steps.close()  # also when a probe stopped the epoch early
        if prefetch is not None:
            prefetch.close()
    log.flush()
    if state.stopped_early is not None:  # mid-epoch: last.safetensors says so (a resume only finishes)
        with stopper.hold():
            if run.main:
                run.save_last()
        distributed.barrier()
    return {t: round(state.loss_sums[t] / state.loss_counts[t], 5) for t in sorted(state.loss_sums)}


def announce_early_stop(run: Run) -> None:
    """train.early_stopping fired: an events.jsonl record and a line say why and where (rank 0)."""
    state = run.progress
    stop = state.stopped_early
    if run.main:
        add_event(run.out_dir, {"event": "stopped_early", **stop, "best": state.best})
        print(f"[early stopping] {stop['reason']}: training stopped after step {stop['step']} (the {stop['at']} "
              f"evaluation of {stop['phase']} epoch {stop['epoch']}); the best dev overall, {state.best:.4f}, "
              "is kept in best.safetensors", flush=True)  # fmt: skip


def draw(run: Run, stream, task: str) -> list[tuple[list[int], float]]:
    """The next global batch of `task` from its stream (every rank draws the same one: with
    train.grad_accum_steps k, of k x batch_size examples), cut into micro-batches of batch_size
    (the last may be smaller); for each, this rank's slice and its loss weight: the slice's
    distributed.local_share times the micro-batch's share of the global batch's examples, so
    that the weighted micro-batch losses sum to the global batch's mean loss."""
    cfg = run.cfg
    size = cfg.train.batch_size
    indices = stream.next_indices(run.data["train"][task], size * cfg.train.grad_accum_steps, cfg.train.seed,
                                  cfg.train.bucket_batches)  # fmt: skip
    micro = [indices[i : i + size] for i in range(0, len(indices), size)]
    shares = [(distributed.local_share(part), len(part) / len(indices)) for part in micro]
    return [(mine, weight * share) for (mine, weight), share in shares]


def make_prefetcher(run: Run, phase: PhaseConfig, schedule: list[str], start: int) -> Prefetcher | None:
    """With train.prefetch, a Prefetcher for this epoch's steps from `start`, already building
    the first one's batch; None where batches are not token batches (MLM, cached vectors)."""
    if not run.cfg.train.prefetch or phase.mode == "mlm" or run.features is not None:
        return None
    prefetch = Prefetcher(run.streams, schedule, start, lambda stream, task: draw(run, stream, task)[0][0],
                          lambda task, indices, step: step_batch(run, task, indices, phase, step), run.device)  # fmt: skip
    prefetch.ahead(run.progress.step)
    return prefetch


def train_step(run: Run, phase: PhaseConfig, task: str, log: StepLog, prefetch: Prefetcher | None = None) -> None:
    """One optimizer step on the next global batch of `task` (this rank's slice of it; with
    train.grad_accum_steps, the gradients of its micro-batches summed), the gradients clipped
    where train.max_grad_norm says, counted and logged; the batch from `prefetch` when that
    built it ahead, which then starts the next."""
    state, cfg = run.progress, run.cfg
    micro = draw(run, run.streams[task], task)
    batch = None
    if prefetch is not None:  # one micro-batch a step (config validation)
        batch = prefetch.take(state.step, task, micro[0][0])
        prefetch.ahead(state.step + 1)
    loss, learns = accumulate(run, phase, task, micro, batch)
    grad_norm = None
    if learns:
        if cfg.train.max_grad_norm is not None:
            params = [p for group in run.optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)  # the norm before clipping
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    lr = run.scheduler.get_last_lr()[0]  # the rate this step used
    run.scheduler.step()
    state.step += 1
    state.step_in_epoch += 1
    log.add(state.step, task, loss, lr, grad_norm)


def accumulate(run: Run, phase: PhaseConfig, task: str, micro: list[tuple[list[int], float]],
               batch: Batch | None = None) -> tuple[torch.Tensor, bool]:  # fmt: skip
    """Each micro-batch's weighted loss (`draw`) back-propagated, its gradients added to the
    parameters' (under DDP, all-reduced with the last one only: `no_sync` before it). Returns
    the step's loss (the sum of the weighted micro-batch losses, detached) and whether it had
    anything to learn (a parameter-free head on a frozen encoder has not)."""
    total, learns = None, False
    for i, (mine, weight) in enumerate(micro):
        last = i == len(micro) - 1
        with contextlib.nullcontext() if last or not hasattr(run.net, "no_sync") else run.net.no_sync():
            with distributed.autocast(run.device, run.cfg.train.precision):
                loss = step_loss(run, task, mine, phase, batch) * weight
            if loss.requires_grad:
                loss.backward()
                learns = True
        total = loss.detach() if total is None else total + loss.detach()
    return total, learns


def uses_rdrop(run: Run, task: str, phase: PhaseConfig) -> bool:
    cfg = run.cfg
    return cfg.train.rdrop > 0 and task in cfg.train.rdrop_tasks and phase.mode != "frozen"


def step_batch(run: Run, task: str, indices: list[int], phase: PhaseConfig, step: int) -> Batch:
    """The token batch of `task`'s examples at `indices` for step `step`, on the device: each
    cross-encoded pair swapped by its coin where configured, the batch doubled for R-Drop,
    packed with train.packing. Reads
    no tensor: a prefetcher may build it ahead, in another thread."""
    cfg, data = run.cfg, run.data["train"][task]
    swap = None
    if cfg.train.swap_pairs and data.cross:  # a coin per (step, example): the same on every DDP rank
        swap = [random.Random(f"{cfg.train.seed}/swap/{step}/{i}").random() < 0.5 for i in indices]
    rdrop = uses_rdrop(run, task, phase)
    rows = indices + indices if rdrop else indices  # R-Drop: the batch twice, two dropout masks
    pack = (cfg.train.pack_length or 0) if cfg.train.packing else None  # 0: rows as long as the longest sequence
    return data.batch(rows, swap + swap if rdrop and swap else swap, pack).to(run.device)


def step_loss(run: Run, task: str, indices: list[int], phase: PhaseConfig, batch: Batch | None = None) -> torch.Tensor:
    """The loss of one batch of `task` at the run's current step: MLM, heads on cached vectors,
    heads on a frozen encoder, or all; with the task's loss weight, R-Drop, swapped pairs and
    distillation where configured; `batch`: the step's token batch when built ahead. Goes
    through `run.net`: the model, or its DDP wrapper (MLM runs in one process only)."""
    net, cfg, device, data = run.net, run.cfg, run.device, run.data["train"][task]
    if task == "mlm":
        return data.loss(run.model.bert, indices, device)
    spec, weight = data.spec, cfg.train.loss_weights.get(task, 1.0)
    head = spec.name  # a train-only task (sst_phrases) trains its owner's head
    if run.features is not None:
        output = net(head, features=run.features.train(task, indices))
        return task_loss(spec, output.float(), data.labels[data.examples_of(indices)].to(device), cfg.train.sts_loss) * weight
    if batch is None:
        batch = step_batch(run, task, indices, phase, run.progress.step)
    output = net(head, batch, frozen_encoder=phase.mode == "frozen").float()
    loss = task_loss(spec, output, batch.labels, cfg.train.sts_loss)
    if data.soft is not None:
        w = cfg.train.distill_weight
        loss = (1 - w) * loss + w * distill_loss(spec.kind, output, data.soft[data.examples_of(batch.indices)].to(device))
    if uses_rdrop(run, task, phase):
        loss = loss + cfg.train.rdrop * disagreement(spec.kind, *output.chunk(2))
    return loss * weight
