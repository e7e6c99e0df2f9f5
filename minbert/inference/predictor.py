"""Ask a trained model about any of its tasks: `predict(task, inputs)`, and for the seed's three
tasks the friendly calls `sentiment`, `paraphrase` and `similarity`.

    from minbert import Predictor
    p = Predictor.load("runs/main-20261126-101900")  # a run directory, a checkpoint file, an export or an ensemble
    p.sentiment(["the movie was a triumph", "dull"])  # [Classification(label=3, name='positive', probabilities=(...)), ...]
    p.paraphrase([("How do I learn Python?", "What is the best way to learn Python?")])  # [Binary(...)]
    p.similarity([("A man plays a guitar.", "A person plays music.")])  # [3.87]
    p.predict("cfimdb", ["a wonderful film"]).results  # any task the run declared: [Binary(...)]

Results are named by the task's kind: a `Classification` (label, name, probabilities), a `Binary`
decision (probability, positive) or, for regression, the score itself (a float).

Inputs take the training code's own path: the run's tokenizer and an `EncodedTask`, length-sorted
batches (`sorted_batches`), the model's heads under `torch.inference_mode`, results put back in
input order. So the numbers are those of `minbert evaluate` and of the run's prediction files (a
test checks that they are equal). Any number of inputs, none included. An empty string is
encoded as just `[CLS] [SEP]`; a text or pair longer than the model's `max_length` tokens (128
unless the run's config says otherwise) is truncated to it, as in training (a pair loses tokens
from its longer side first); `predict` says which inputs were cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from minbert import distributed
from minbert.config import RunConfig, window_stride
from minbert.evaluation import head_outputs
from minbert.inference import ensemble, manifest
from minbert.inference.backends import BACKENDS, INT8_BATCH, Backend, TorchBackend, int8_backend
from minbert.inference.model_card import RunRecord
from minbert.run_files import load_checkpoint
from minbert.runs import build_trained
from minbert.tasks.data import Example
from minbert.tasks.encoding import EncodedTask
from minbert.tasks.spec import PARAPHRASE_THRESHOLD, TaskSet, probability_logit
from minbert.tokenizer import WordPieceTokenizer


@dataclass(frozen=True)
class Classification:
    """A classification task's answer (SST-5 sentiment, or a declared task's classes)."""

    label: int  # the class: the argmax of the logits (SST-5: 0 very negative to 4 very positive)
    name: str  # its name (the task's label_names; SST_LABEL_NAMES for SST)
    probabilities: tuple[float, ...]  # softmax of the logits, in label order


@dataclass(frozen=True)
class Binary:
    """A binary task's answer (Quora paraphrase, or a declared task such as CFIMDB's sentiment)."""

    probability: float  # sigmoid of the head's logit: P(positive)
    positive: bool  # probability > the threshold the model was evaluated with (0.5)


@dataclass(frozen=True)
class Predictions:
    """What `Predictor.predict` returns: the results (Classification, Binary or a float score) in
    input order, and which inputs were truncated to `max_length` tokens."""

    task: str
    results: list
    truncated: list[bool]
    max_length: int

    @property
    def truncated_count(self) -> int:
        return sum(self.truncated)


class Predictor:
    """A trained model behind `predict(task, inputs)` for each of its tasks (`tasks`), which also
    reports truncation, and the seed tasks' `sentiment`, `paraphrase` and `similarity`. Build one
    with `Predictor.load`, or from a backend, its tokenizer and the run config by hand."""

    # The dev scores stored with the weights (None for a Predictor built by hand). `minbert serve`
    # shows them at /v1/model.
    dev_scores: dict[str, float] | None = None
    # What the loaded files say about the run (config, dev scores, data fingerprints, encoder
    # sizes, the checkpoint trained): the facts of its model card (model_card.py). None by hand.
    record: RunRecord | None = None

    def __init__(self, backend: Backend, tokenizer: WordPieceTokenizer, cfg: RunConfig, batch_size: int = 128,
                 threshold: float = PARAPHRASE_THRESHOLD, source: str = "", backend_name: str = "torch"):  # fmt: skip
        """`cfg`: the run's resolved config, whose tasks and model settings the Predictor uses.
        (7 parameters: the backend and what encodes its inputs, then four settings with defaults.)"""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"paraphrase threshold {threshold} is not a probability strictly between 0 and 1")
        self.backend, self.tokenizer, self.run_config, self.model_cfg = backend, tokenizer, cfg, cfg.model
        self.tasks = TaskSet.of(cfg.tasks)
        self.batch_size, self.threshold, self.source, self.backend_name = batch_size, threshold, source, backend_name

    @classmethod
    def load(cls, path: str | Path, backend: str = "torch", device: str | torch.device | None = None,
             batch_size: int | None = None, overrides: Sequence[str] = (), precision: str = "auto") -> "Predictor":  # fmt: skip
        """From a run directory (its best.safetensors), a checkpoint file, a directory written by
        `minbert export` (backend "torch" reads its safetensors, "onnx" its ONNX graphs through
        onnxruntime), or one written by `minbert ensemble` (torch only: every member runs on
        each batch, see minbert.inference.ensemble). Backend "int8" runs int8 ONNX graphs in onnxruntime
        on the CPU: an export's `{task}.int8.onnx`, else made from the model when loading
        (`int8_backend`). `overrides` are dotted config keys for a run (e.g.
        `model.checkpoint=DIR` where its base checkpoint, whose vocab.txt it uses, has moved).
        `precision`: the torch backend's ("auto": bf16 where the device has it natively; TorchBackend)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
        if backend in ("onnx", "int8") and device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"the {backend} backend runs on the CPU (onnxruntime), not {torch.device(device).type}")
        device = torch.device(device) if device else distributed.default_device()
        path = Path(path)
        if ensemble.is_ensemble(path):
            if backend != "torch":
                raise ValueError(f"{path}: an ensemble runs on the torch backend only (its members' PyTorch models)")
            run, dev = ensemble.load_ensemble_dir(path, overrides, device, precision)
            cfg, tokenizer, threshold = run.cfg, run.tokenizer, PARAPHRASE_THRESHOLD
            record = RunRecord(cfg, dev, None, None, str(path))  # several members: one config speaks for them
        elif manifest.is_export(path):
            found = manifest.read_manifest(path)
            cfg, threshold, tokenizer, dev = found.cfg, found.threshold, manifest.read_tokenizer(path), found.dev
            record = RunRecord(cfg, dev, found.data, found.bert_config, found.source or str(path))
            from minbert.inference.onnx_graphs import OnnxBackend, has_graphs

            tasks = TaskSet.of(cfg.tasks)
            if backend == "onnx" or (backend == "int8" and has_graphs(path, tasks, "int8")):
                run: Backend = OnnxBackend(path, cfg, "int8" if backend == "int8" else "fp32")
            elif backend == "int8":  # an export written without int8 graphs: made now
                source = path if has_graphs(path, tasks) else manifest.load_model(path, found)
                run = int8_backend(source, tokenizer, cfg)
            else:
                run = TorchBackend(manifest.load_model(path, found), device, precision)
        else:
            if backend == "onnx":
                raise ValueError(f"{path}: the onnx backend reads a directory written by "
                                 f"`minbert export --checkpoint {path} --out DIR --format onnx`")  # fmt: skip
            ckpt = load_checkpoint(path)
            model, tokenizer, cfg = build_trained(ckpt, list(overrides), path)
            run = (int8_backend(model, tokenizer, cfg) if backend == "int8"
                   else TorchBackend(model, device, precision))  # fmt: skip
            threshold, dev = PARAPHRASE_THRESHOLD, ckpt.dev
            record = RunRecord(cfg, dev, ckpt.data, ckpt.bert_config or vars(model.bert.config), str(path))
        batch_size = batch_size or (INT8_BATCH if backend == "int8" else cfg.train.eval_batch_size)
        predictor = cls(run, tokenizer, cfg, batch_size, threshold, str(path), backend)
        predictor.dev_scores, predictor.record = dev, record
        return predictor

    def __repr__(self) -> str:
        m = self.model_cfg
        return (f"Predictor({self.source!r}, backend={self.backend_name!r}, tasks={list(self.tasks)}, "
                f"pooling={m.pooling!r}, pair_encoding={m.pair_encoding!r}, max_length={m.max_length})")  # fmt: skip

    # --- the seed's three questions ------------------------------------------------------

    def sentiment(self, texts: Sequence[str]) -> list[Classification]:
        """SST-5 sentiment of each text: label 0-4, its name, the five class probabilities."""
        return self.predict("sst", texts).results

    def paraphrase(self, pairs: Sequence[tuple[str, str]]) -> list[Binary]:
        """For each (question, question) pair: the probability that they are paraphrases, and the
        decision at the model's threshold (`positive`: they are)."""
        return self.predict("para", pairs).results

    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """STS-B similarity of each (sentence, sentence) pair, a score in [0, 5]."""
        return self.predict("sts", pairs).results

    # --- the machinery -------------------------------------------------------------------

    def predict(self, task: str, inputs: Sequence, progress: bool | None = False) -> Predictions:
        """Results for `task` (one of `tasks`: texts for a single-text task, (text, text) pairs for a
        pair task), in input order, with the inputs that were truncated. `progress`: a bar over
        the batches (None: on terminals only)."""
        spec = self.tasks.check(task)
        rows = _as_rows(task, spec.is_pair, inputs)
        if not rows:
            return Predictions(task, [], [], self.model_cfg.max_length)
        examples = [Example(str(i), texts, None) for i, texts in enumerate(rows)]
        m = self.model_cfg
        data = EncodedTask(spec, examples, self.tokenizer, spec.pair_encoding or m.pair_encoding, m.max_length,
                           window_stride(m, "predict"))  # fmt: skip
        outputs = head_outputs(lambda indices: self.backend(task, data, indices), task, data, self.batch_size, progress)
        return Predictions(task, self._results(task, outputs), self._truncated(data, rows), self.model_cfg.max_length)

    def _results(self, task: str, outputs: torch.Tensor) -> list:
        """By the task's kind: a Classification (label, name, probabilities), a Binary decision
        (probability, positive), or the score for regression."""
        spec = self.tasks[task]
        if spec.kind == "classification":
            probabilities = torch.softmax(outputs, dim=-1).tolist()
            labels = outputs.argmax(dim=-1).tolist()  # argmax of the logits, as TaskSpec.predict
            return [Classification(k, spec.class_names[k], tuple(p)) for k, p in zip(labels, probabilities)]
        if spec.kind == "binary":
            decisions = (outputs > probability_logit(self.threshold)).tolist()  # TaskSpec.predict at 0.5
            return [Binary(p, d) for p, d in zip(torch.sigmoid(outputs).tolist(), decisions)]
        low, high = spec.value_range
        return outputs.clamp(low, high).tolist()  # a cosine head can overshoot its range by an ulp

    def _truncated(self, data: EncodedTask, rows: list[tuple[str, ...]]) -> list[bool]:
        """Which inputs lost tokens to max_length: only those whose encoding reached it are
        tokenised again, without truncation, to find out."""
        limit = self.model_cfg.max_length
        if data.owner is not None:  # cut into windows: no token is lost
            return [False] * len(rows)
        flags = []
        for texts, length in zip(rows, data.lengths):
            if length < limit:
                flags.append(False)
                continue
            sizes = [len(self.tokenizer.tokens(t)) for t in texts]
            flags.append((sum(sizes) + 3 if data.cross else max(sizes) + 2) > limit)  # cross: 3 specials
        return flags


def _as_rows(task: str, pair: bool, inputs: Sequence) -> list[tuple[str, ...]]:
    """Texts (a single-text task) or pairs (a pair task) as tuples of strings; a clear TypeError otherwise."""
    if isinstance(inputs, (str, bytes)):
        raise TypeError(f"{task}: pass a list of {'(text, text) pairs' if pair else 'texts'}, not a single string")
    rows = []
    for i, item in enumerate(inputs):
        texts = tuple(item) if pair and not isinstance(item, (str, bytes)) else (item,)
        if pair and (isinstance(item, (str, bytes)) or len(texts) != 2):
            raise TypeError(f"{task}: input {i} is not a (text, text) pair: {item!r}")
        odd = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if odd:
            raise TypeError(f"{task}: input {i} holds a {odd[0]}, not a string: {item!r}")
        rows.append(texts)
    return rows


def split_inputs(data_dir: str | Path, tasks: TaskSet, split: str = "dev", limit: int | None = None) -> dict[str, list]:
    """A data split's inputs for each of `tasks` as the Predictor takes them (texts, or pairs), file order."""
    return {task: [e.texts if spec.is_pair else e.texts[0] for e in spec.read(Path(data_dir), split).examples][:limit]
            for task, spec in tasks.items()}  # fmt: skip
