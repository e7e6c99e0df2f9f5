"""A run, as training, inference, ensembles and reports all see it: the files it reads (checked
before any model is built), its tokenised data, its model built from a config, a trained model
loaded back from a checkpoint, and its outputs (dev scores and the prediction files).

Everything here takes a config (`RunConfig`) and derives the run's tasks from it
(`TaskSet.of(cfg.tasks)`), so two runs with different tasks never meet in a shared registry.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from minbert import distributed
from minbert.checkpoint import CheckpointError, load_pretrained, resolve_checkpoint_dir
from minbert.config import ConfigError, RunConfig, load_config, window_stride, with_precision
from minbert.evaluation import dev_scores, predict, prediction_path, write_predictions
from minbert.model import BertConfig, BertModel
from minbert.multitask import MultitaskBert
from minbert.run_files import Checkpoint, load_checkpoint
from minbert.tasks.data import Example, fingerprints, resolve_data_dir, soft_labels_path
from minbert.tasks.encoding import EncodedTask
from minbert.tasks.spec import TRAIN_ONLY, TaskSet
from minbert.tokenizer import WordPieceTokenizer

Raw = dict[str, dict[str, list[Example]]]  # split -> task -> examples
Encoded = dict[str, dict[str, EncodedTask]]  # split -> task -> tokenised examples
PHRASE_FILE = "sst-trees-train.txt"  # the SST training trees (tasks/phrases.py)


# ---------------------------------------------------------------------------------------
# Data


def needed_splits(cfg: RunConfig, train: bool = True, test: bool | None = None) -> dict[str, tuple[str, ...]]:
    """The files a run reads, by split: the trained tasks' train files, every task's dev file,
    and (test=None: if cfg.train.predict_test) the test file of every task that has one."""
    tasks = TaskSet.of(cfg.tasks)
    splits = {"train": tuple(t for t in tasks.trainable if any(t in p.tasks for p in cfg.train.phases))} if train else {}
    splits["dev"] = tuple(tasks)
    if cfg.train.predict_test if test is None else test:
        splits["test"] = tuple(t for t, spec in tasks.items() if "test" in spec.files)
    return splits


def read_all(cfg: RunConfig, splits: dict[str, tuple[str, ...]]) -> Raw:
    """Read and validate every file the run needs, before any model is built."""
    from minbert.tasks.phrases import phrase_examples

    data_dir, tasks = resolve_data_dir(cfg.data.dir), TaskSet.of(cfg.tasks)
    out: Raw = {}
    for split, names in splits.items():
        out[split] = {}
        for task in names:
            result = tasks[task].read(data_dir, split, cfg.data.skip_bad_rows)
            if result.skipped and task not in TRAIN_ONLY:
                print(f"{result.path}: {result.skipped_summary()}")
            examples = result.examples
            if _reads_phrases(cfg, split, task):
                phrases = phrase_examples(data_dir / PHRASE_FILE, examples, cfg.data.phrase_min_words)
                examples = phrases if task == "sst_phrases" else examples + phrases
            cap = cfg.data.max_train_examples if split == "train" else cfg.data.max_eval_examples
            out[split][task] = fixed_sample(examples, cap, f"{cfg.train.seed}/{split}/{task}")
    return out


def _reads_phrases(cfg: RunConfig, split: str, task: str) -> bool:
    """Whether `task`'s examples of `split` take the phrases of the SST training trees."""
    return split == "train" and (task == "sst_phrases" or (task == "sst" and cfg.data.sst_phrases))


def data_files(cfg: RunConfig, splits: dict[str, tuple[str, ...]]) -> list[Path]:
    """Every file read_all reads for `splits`, in reading order, and, for a training split with
    train.distill_from, the teacher's soft-label files that attach_soft_labels reads."""
    data_dir, tasks = resolve_data_dir(cfg.data.dir), TaskSet.of(cfg.tasks)
    files: list[Path] = []
    for split, names in splits.items():
        for task in names:
            files.append(tasks[task].file(data_dir, split))
            if _reads_phrases(cfg, split, task):
                files.append(data_dir / PHRASE_FILE)
    if cfg.train.distill_from and "train" in splits:
        files += [p for t in splits["train"] if (p := soft_labels_path(cfg.train.distill_from, t)).is_file()]
    return list(dict.fromkeys(files))  # sst and sst_phrases read one trees file


def data_fingerprints(cfg: RunConfig, splits: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    """The fingerprints (tasks.data.fingerprint) of every file the run reads for `splits`,
    keyed by their paths relative to the data directory."""
    return fingerprints(data_files(cfg, splits), resolve_data_dir(cfg.data.dir))


def fixed_sample(examples: list[Example], k: int | None, key: str) -> list[Example]:
    """k of the examples, chosen at random by `key` (the same choice every time), in file order;
    all of them where k is None or not below their number."""
    if k is None or k >= len(examples):
        return examples
    return [examples[i] for i in sorted(random.Random(key).sample(range(len(examples)), k))]


def encode_all(raw: Raw, tokenizer: WordPieceTokenizer, cfg: RunConfig) -> Encoded:
    """Every split's examples tokenised, each with its task's spec (a train-only task's owner's);
    batches padded to train.length_buckets where set."""
    tasks = TaskSet.of(cfg.tasks)
    return {
        split: {task: EncodedTask(tasks[task], examples, tokenizer, tasks[task].pair_encoding or cfg.model.pair_encoding,
                                  cfg.model.max_length, window_stride(cfg.model, split), cfg.train.length_buckets)  # fmt: skip
                for task, examples in by_task.items()}
        for split, by_task in raw.items()
    }


# ---------------------------------------------------------------------------------------
# The model


def build_model(cfg: RunConfig, bert_config: dict | None = None) -> tuple[MultitaskBert, WordPieceTokenizer]:
    """Pretrained weights from cfg.model.checkpoint, or (bert_config given) a bare model whose
    weights come from a minbert checkpoint next; heads for the config's tasks."""
    ckpt_dir = resolve_checkpoint_dir(cfg.model.checkpoint)
    tokenizer = WordPieceTokenizer(ckpt_dir / "vocab.txt")
    bert = BertModel(BertConfig(**bert_config)) if bert_config else load_pretrained(ckpt_dir)
    if cfg.model.max_length > bert.config.max_position_embeddings:
        positions = bert.config.max_position_embeddings
        raise ConfigError(f"model.max_length: {cfg.model.max_length} is more than the {positions} positions "
                          f"(max_position_embeddings) of the checkpoint {ckpt_dir}")  # fmt: skip
    return MultitaskBert(bert, cfg.model, TaskSet.of(cfg.tasks)), tokenizer


def load_trained(checkpoint_path: str | Path, overrides: list[str] = ()) -> tuple[MultitaskBert, WordPieceTokenizer, RunConfig]:
    """A model saved by training (a run directory, its best.safetensors or last.safetensors),
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


# ---------------------------------------------------------------------------------------
# Outputs


def predict_split(model: MultitaskBert, split: str, data: dict[str, EncodedTask], cfg: RunConfig, device,
                  features=None) -> dict[str, list]:  # fmt: skip
    """Each task's predictions on one split, at the run's eval batch size and precision;
    `features`: a frozen encoder's cached vectors (training/features.py) or None."""
    return {task: predict(model, task, encoded, cfg.train.eval_batch_size,
                          features.split_fn(split, task) if features else None, device, cfg.train.precision)
            for task, encoded in data.items()}  # fmt: skip


def evaluate_dev(model: MultitaskBert, dev: dict[str, EncodedTask], cfg: RunConfig, device, features=None) -> dict[str, float]:
    """Dev scores (see predict_split)."""
    return dev_scores(predict_split(model, "dev", dev, cfg, device, features), dev)


def write_outputs(model: MultitaskBert, data: Encoded, cfg: RunConfig, out_dir: Path, device, features=None,
                  layout: str = "csv") -> dict[str, float]:  # fmt: skip
    """Dev predictions (scored) and, where loaded, test predictions, as the six files (`layout`:
    see evaluation.write_predictions). Everything is predicted (and checked finite) before the
    first file is written. (7 parameters: a run's model, data, config and place, and two
    optional ways of predicting; bundling them would only rename them.)"""
    preds = {(split, task): p for split in ("dev", "test")
             for task, p in predict_split(model, split, data.get(split, {}), cfg, device, features).items()}  # fmt: skip
    scores = dev_scores({task: p for (split, task), p in preds.items() if split == "dev"}, data["dev"])
    if distributed.is_main():
        for (split, task), p in preds.items():
            spec = data[split][task].spec
            write_predictions(prediction_path(out_dir, spec, split), data[split][task].ids, p, spec, layout)
    return {k: round(v, 4) for k, v in scores.items()}


def predict_checkpoint(checkpoint_path, overrides=(), out_dir: Path | None = None, device=None,
                       layout: str = "csv", precision: str = "auto") -> dict:  # fmt: skip
    """Dev scores of a saved model; with out_dir, also the six prediction files there, in `layout`.
    `precision`: "auto" predicts in bf16 where the device has it natively (not the run's
    training precision: see inference.backends.TorchBackend)."""
    device = torch.device(device) if device else distributed.default_device()
    model, tokenizer, cfg = load_trained(checkpoint_path, list(overrides))
    cfg = with_precision(cfg, precision)
    data = encode_all(read_all(cfg, needed_splits(cfg, train=False, test=out_dir is not None)), tokenizer, cfg)
    model.to(device)
    if out_dir is None:
        return {k: round(v, 4) for k, v in evaluate_dev(model, data["dev"], cfg, device).items()}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write_outputs(model, data, cfg, Path(out_dir), device, layout=layout)
