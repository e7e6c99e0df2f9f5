"""The training recipe: one plain function wiring the pieces in a fixed order.

seed -> read and validate all data -> tokenizer and model -> for each phase: optimizer,
schedule, epochs of sampled task batches, dev evaluation, checkpoints -> best checkpoint ->
dev scores and the six prediction files.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minbert import distributed
from minbert.checkpoint import load_pretrained, resolve_checkpoint_dir, save_atomic
from minbert.config import PhaseConfig, RunConfig, load_config, save_config, to_dict
from minbert.data import Example, length_bucketed_batches, resolve_data_dir
from minbert.evaluation import dev_scores, predict, prediction_path, write_predictions
from minbert.model import BertConfig, BertModel
from minbert.multitask import EncodedTask, MultitaskBert
from minbert.samplers import epoch_schedule
from minbert.tasks import TASKS
from minbert.tokenizer import WordPieceTokenizer

ALL_TASKS = ("sst", "para", "sts")


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
            result = TASKS[task].read(data_dir, split, cfg.data.skip_bad_rows)
            if result.skipped:
                print(f"{result.path}: skipped {result.skipped} bad row(s)")
            examples = result.examples
            if cfg.data.sst_phrases and (split, task) == ("train", "sst"):
                from minbert.phrases import phrase_examples

                examples = examples + phrase_examples(data_dir / "sst-trees-train.txt", examples)
            cap = cfg.data.max_train_examples if split == "train" else cfg.data.max_eval_examples
            if cap is not None and len(examples) > cap:
                keep = sorted(random.Random(f"{cfg.train.seed}/{split}/{task}").sample(range(len(examples)), cap))
                examples = [examples[i] for i in keep]
            out[split][task] = examples
    return out


def needed_splits(cfg: RunConfig) -> dict[str, tuple[str, ...]]:
    train_tasks = tuple(t for t in ALL_TASKS if any(t in p.tasks for p in cfg.train.phases))
    splits = {"train": train_tasks, "dev": ALL_TASKS}
    if cfg.train.predict_test:
        splits["test"] = ALL_TASKS
    return splits


def encode_all(raw, tokenizer: WordPieceTokenizer, cfg: RunConfig) -> dict[str, dict[str, EncodedTask]]:
    return {
        split: {
            task: EncodedTask(TASKS[task], examples, tokenizer, cfg.model.pair_encoding, cfg.model.max_length)
            for task, examples in tasks.items()
        }
        for split, tasks in raw.items()
    }


# ---------------------------------------------------------------------------------------
# Model, optimizer, schedule


def build_model(cfg: RunConfig, bert_config: dict | None = None) -> tuple[MultitaskBert, WordPieceTokenizer]:
    """Pretrained weights from cfg.model.checkpoint, or (bert_config given) a bare model whose
    weights come from a minbert checkpoint next."""
    ckpt_dir = resolve_checkpoint_dir(cfg.model.checkpoint)
    tokenizer = WordPieceTokenizer(ckpt_dir / "vocab.txt")
    bert = BertModel(BertConfig(**bert_config)) if bert_config else load_pretrained(ckpt_dir)
    return MultitaskBert(bert, cfg.model), tokenizer


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

    def next_indices(self, data: EncodedTask, batch_size: int, seed: int) -> list[int]:
        if self._batches is None:
            rng = random.Random(f"{seed}/{self.task}/pass{self.passes}")
            self._batches = length_bucketed_batches(data.lengths, batch_size, rng)
        indices = self._batches[self.position]
        self.position += 1
        if self.position == len(self._batches):
            self.passes, self.position, self._batches = self.passes + 1, 0, None
        return indices

    def state(self) -> dict:
        return {"passes": self.passes, "position": self.position}


# ---------------------------------------------------------------------------------------
# The recipe


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    init_from: str | Path | None = None,
) -> dict[str, float]:
    """Train as `cfg` says, writing everything into out_dir; returns the final dev scores.

    `stop_after_epochs` stops (as an interruption would) after that many epochs of this
    call; `resume=True` continues from out_dir/last.pt. `init_from` is a finished run whose
    phases are the first phases of `cfg`: training continues from its end (the seed
    report's Models E and F continue D) instead of repeating them.
    """
    out_dir = Path(out_dir)
    _, world = distributed.init()
    main = distributed.is_main()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device else distributed.default_device()
    if world > 1 and any(p.mode == "mlm" for p in cfg.train.phases):
        raise ValueError("MLM phases run in one process; start them without torchrun")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    set_seed(cfg.train.seed)

    raw = read_all(cfg, needed_splits(cfg))  # fails here, before any long work, on bad data
    model, tokenizer = build_model(cfg)
    data = encode_all(raw, tokenizer, cfg)
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
    sizes = {t: len(d) for t, d in data["train"].items()}

    features = None
    state = {"phase": 0, "epoch": 0, "step": 0, "best": -math.inf, "history": [], "streams": {}}
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    resume_ckpt = None
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"{last_path}: nothing to resume from")
        resume_ckpt = torch.load(last_path, map_location="cpu", weights_only=False)
        if resume_ckpt["config"] != to_dict(cfg):
            raise ValueError(f"{last_path}: the run was started with a different config; resume needs the same one")
        model.load_state_dict(resume_ckpt["model"])
        if mlm_head is not None:
            mlm_head.load_state_dict(resume_ckpt["mlm_head"])
        state = resume_ckpt["state"]
        _set_rng_state(resume_ckpt["rng"])
    else:
        if main:
            save_config(cfg, out_dir / "config.yaml")
            for name in ("steps.jsonl", "epochs.jsonl"):
                (out_dir / name).unlink(missing_ok=True)
        distributed.barrier()
        if init_from is not None:
            state = _continue_from(Path(init_from), cfg, model, out_dir)
    streams = {t: TaskStream(t, **state["streams"].get(t, {})) for t in sizes}
    epochs_this_call = 0
    started = time.time()

    for phase_idx in range(state["phase"], len(cfg.train.phases)):
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
        optimizer = make_optimizer(model, phase, cfg.train.fused_adamw, mlm_head if phase.mode == "mlm" else None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(phase, total_steps))
        features = None
        if frozen and cfg.train.cache_features:
            from minbert.features import FrozenFeatures

            features = FrozenFeatures(model, data, cfg, device)
        if resume_ckpt is not None and resume_ckpt["state"]["phase"] == phase_idx and state["epoch"] > 0:
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            scheduler.load_state_dict(resume_ckpt["scheduler"])
        resume_ckpt = None

        for epoch in range(state["epoch"], phase.epochs):
            model.train()
            if frozen:
                model.bert.eval()  # a frozen encoder runs without dropout, as its cached vectors do
            losses = _run_epoch(net, phase, schedules[epoch], data["train"], streams, optimizer, scheduler,
                                cfg, device, features, out_dir, state, progress,
                                desc=f"{phase.name} {epoch + 1}/{phase.epochs}")  # fmt: skip
            record = {"phase": phase.name, "phase_index": phase_idx, "epoch": epoch + 1, "step": state["step"],
                      "train_loss": losses, "elapsed_s": round(time.time() - started, 1)}  # fmt: skip
            if cfg.train.eval_every_epoch or (phase_idx == len(cfg.train.phases) - 1 and epoch == phase.epochs - 1):
                scores = evaluate_dev(model, data["dev"], cfg, device, features)
                record["dev"] = scores
                if scores["overall"] > state["best"]:
                    state["best"] = scores["overall"]
                    record["best"] = True
                    if main:
                        save_atomic({"model": model.state_dict(), "config": to_dict(cfg),
                                     "bert_config": vars(model.bert.config), "dev": scores}, best_path)  # fmt: skip
            state["history"].append(record)
            if main:
                with (out_dir / "epochs.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print_epoch(record)
            state["epoch"] = epoch + 1
            if state["epoch"] == phase.epochs:  # the checkpoint of a finished phase points at the next
                state["phase"], state["epoch"] = phase_idx + 1, 0
            state["streams"] = {t: s.state() for t, s in streams.items()}
            if main:
                save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "state": state, "rng": _rng_state(),
                             "config": to_dict(cfg), "mlm_head": mlm_head.state_dict() if mlm_head else None},
                            last_path)  # fmt: skip
            distributed.barrier()
            epochs_this_call += 1
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                return {}
        state["phase"], state["epoch"] = phase_idx + 1, 0  # also for a phase of 0 epochs
    model.bert.requires_grad_(True)
    distributed.barrier()
    # An encoder that never trained still matches its cached vectors: predict from those.
    encoder_trained = any(p.mode != "frozen" for p in cfg.train.phases)
    if encoder_trained or not cfg.train.cache_features:
        features = None
    elif features is None:  # resumed after the last epoch: nothing cached in this process yet
        from minbert.features import FrozenFeatures

        features = FrozenFeatures(model, data, cfg, device)
    return finish(model, data, cfg, out_dir, best_path, device, time.time() - started, features)


def _run_epoch(net, phase, schedule, train_data, streams, optimizer, scheduler, cfg, device, features,
               out_dir, state, progress, desc) -> dict[str, float]:  # fmt: skip
    """One epoch: a batch of the scheduled task, its loss back-propagated, an optimizer step."""
    sums = {t: 0.0 for t in set(schedule)}
    counts = {t: 0 for t in set(schedule)}
    pending: list[tuple[int, str, torch.Tensor]] = []
    log_path = out_dir / "steps.jsonl"
    main = distributed.is_main()

    def flush() -> None:
        # One host sync per flush, not per step: losses stay on the device until here.
        if not pending:
            return
        values = torch.stack([l for _, _, l in pending]).tolist()
        with log_path.open("a") if main else open(os.devnull, "w") as f:
            for (step, task, _), v in zip(pending, values):
                sums[task] += v
                counts[task] += 1
                f.write(json.dumps({"step": step, "task": task, "loss": round(v, 5),
                                    "lr": scheduler.get_last_lr()[0]}) + "\n")  # fmt: skip
        pending.clear()

    for task in tqdm(schedule, desc=desc, disable=not (progress and main), leave=False, mininterval=2.0):
        # Every rank draws the same global batch and trains on its own slice of it.
        indices = streams[task].next_indices(train_data[task], cfg.train.batch_size, cfg.train.seed)
        mine, weight = distributed.local_share(indices)
        with distributed.autocast(torch.device(device), cfg.train.precision):
            loss = _step_loss(net, task, mine, train_data[task], phase, features, cfg, device)
        if loss.requires_grad:  # a parameter-free head on a frozen encoder has nothing to learn
            (loss * weight).backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state["step"] += 1
        pending.append((state["step"], task, loss.detach()))
        if len(pending) >= 50:
            flush()
    flush()
    return {t: round(sums[t] / counts[t], 5) for t in sorted(sums) if counts[t]}


def _step_loss(net, task, indices, data, phase, features, cfg, device) -> torch.Tensor:
    """The loss of one batch: MLM, heads on cached vectors, heads on a frozen encoder, or all.
    `net` is the model, or its DDP wrapper (MLM runs in one process only)."""
    if task == "mlm":
        return data.loss(net.bert, indices, device)
    if features is not None:
        labels = data.labels[indices].to(device)
        output = net(task, features=features.train(task, indices))
    else:
        batch = data.batch(indices).to(device)
        labels = batch.labels
        output = net(task, batch, frozen_encoder=phase.mode == "frozen")
    return task_loss(task, output.float(), labels, cfg.train.sts_loss)


def cosent_loss(scores: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT (Su 2022): log(1 + sum over pairs with y_i > y_j of exp(scale (s_j - s_i))).
    A ranking loss on the predicted similarities, here on scores / 5 in [0, 1]."""
    s = scores / 5.0
    diff = scale * (s[None, :] - s[:, None])  # (B, B): s_j - s_i at [i, j]
    diff = diff.masked_fill(~(labels[:, None] > labels[None, :]), float("-inf"))
    return torch.logsumexp(torch.cat([torch.zeros(1, device=s.device, dtype=s.dtype), diff.flatten()]), dim=0)


def task_loss(task: str, output: torch.Tensor, labels: torch.Tensor, sts_loss: str = "mse") -> torch.Tensor:
    loss = TASKS[task].loss(output, labels)
    if task == "sts" and sts_loss != "mse":
        cosent = cosent_loss(output, labels)
        loss = cosent if sts_loss == "cosent" else loss + cosent
    return loss


def evaluate_dev(model, dev, cfg, device, features=None) -> dict[str, float]:
    preds = {
        task: predict(model, task, dev[task], cfg.train.eval_batch_size,
                      features.split_fn("dev", task) if features else None, device, cfg.train.precision)  # fmt: skip
        for task in ALL_TASKS
    }
    return dev_scores(preds, dev)


def finish(model, data, cfg, out_dir, best_path, device, elapsed: float, features=None) -> dict[str, float]:
    """Reload the best checkpoint, score it on dev, write the prediction files and metrics.json."""
    if best_path.exists():
        model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=False)["model"])
    model.to(device)
    scores = write_outputs(model, data, cfg, out_dir, device, features)
    scores = {**scores, "train_wall_s": round(elapsed, 1)}
    if distributed.is_main():
        (out_dir / "metrics.json").write_text(json.dumps(scores, indent=2) + "\n")
        print_history(out_dir / "epochs.jsonl")
    return scores


def print_history(epochs_file: Path) -> None:
    """The per-epoch dev scores as a short table."""
    if not epochs_file.exists():
        return
    print(f"{'phase':<20}{'epoch':>6}{'sst':>8}{'para':>8}{'sts':>8}{'overall':>9}")
    for line in epochs_file.read_text().splitlines():
        r = json.loads(line)
        dev = r.get("dev")
        cols = "".join(f"{dev[k]:>8.3f}" for k in ("sst", "para", "sts")) + f"{dev['overall']:>9.3f}" if dev else ""
        print(f"{r['phase']:<20}{r['epoch']:>6}{cols}{'  *' if r.get('best') else ''}")


def write_outputs(model, data, cfg, out_dir: Path, device, features=None) -> dict[str, float]:
    """Dev predictions (scored) and, where loaded, test predictions, as the six CSV files."""
    scores: dict[str, float] = {}
    dev_preds = {}
    for split in ("dev", "test"):
        for task, encoded in data.get(split, {}).items():
            preds = predict(model, task, encoded, cfg.train.eval_batch_size,
                            features.split_fn(split, task) if features else None, device, cfg.train.precision)  # fmt: skip
            if distributed.is_main():
                write_predictions(prediction_path(out_dir, task, split), encoded.ids, preds, task)
            if split == "dev":
                dev_preds[task] = preds
    scores = dev_scores(dev_preds, data["dev"])
    return {k: round(v, 4) for k, v in scores.items()}


def print_epoch(record: dict) -> None:
    dev = record.get("dev", {})
    losses = " ".join(f"{t}={v:.3f}" for t, v in record["train_loss"].items())
    cols = " ".join(f"{k} {dev[k]:.3f}" for k in ("sst", "para", "sts", "overall") if k in dev)
    mark = " *best" if record.get("best") else ""
    print(f"[{record['phase']} epoch {record['epoch']}] loss {losses} | dev {cols}{mark} | {record['elapsed_s']}s", flush=True)


def _continue_from(init_dir: Path, cfg: RunConfig, model: MultitaskBert, out_dir: Path) -> dict:
    """Load a finished run whose phases are a prefix of cfg's; return the state to go on from."""
    ckpt = torch.load(init_dir / "last.pt", map_location="cpu", weights_only=False)
    done = ckpt["config"]["train"]["phases"]
    ours = to_dict(cfg)
    if ckpt["state"]["phase"] != len(done):
        raise ValueError(f"{init_dir}: that run has not finished its phases; resume it first")
    same = {k: v for k, v in ckpt["config"]["train"].items() if k != "phases"} == {
        k: v for k, v in ours["train"].items() if k != "phases"
    }
    if ours["train"]["phases"][: len(done)] != done or ckpt["config"]["model"] != ours["model"] or not same \
            or ckpt["config"]["data"] != ours["data"]:  # fmt: skip
        raise ValueError(f"{init_dir}: its config is not the first {len(done)} phase(s) of this one")
    model.load_state_dict(ckpt["model"])
    _set_rng_state(ckpt["rng"])
    if (init_dir / "best.pt").exists():
        shutil.copyfile(init_dir / "best.pt", out_dir / "best.pt")
    for name in ("steps.jsonl", "epochs.jsonl"):
        if (init_dir / name).exists():
            shutil.copyfile(init_dir / name, out_dir / name)
    return ckpt["state"]


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def load_trained(checkpoint_path: str | Path, overrides: list[str] = ()) -> tuple[MultitaskBert, WordPieceTokenizer, RunConfig]:
    """A model saved by `train` (best.pt), with its config (overrides apply, e.g. data.dir)."""
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    cfg = load_config(None, overrides, base=ckpt["config"])
    model, tokenizer = build_model(cfg, ckpt["bert_config"])
    model.load_state_dict(ckpt["model"])
    return model, tokenizer, cfg



def predict_checkpoint(checkpoint_path, overrides=(), out_dir: Path | None = None, progress=True, device=None) -> dict:
    """Dev scores of a saved model; with out_dir, also the six prediction files there."""
    device = torch.device(device) if device else distributed.default_device()
    model, tokenizer, cfg = load_trained(checkpoint_path, list(overrides))
    splits = {"dev": ALL_TASKS, **({"test": ALL_TASKS} if out_dir else {})}
    data = encode_all(read_all(cfg, splits), tokenizer, cfg)
    model.to(device)
    if out_dir is None:
        return {k: round(v, 4) for k, v in evaluate_dev(model, data["dev"], cfg, device).items()}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write_outputs(model, data, cfg, Path(out_dir), device)
