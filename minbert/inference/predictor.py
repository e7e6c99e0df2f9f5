"""Ask a trained model: the sentiment of sentences, whether two questions are paraphrases, how
similar two sentences are.

    from minbert import Predictor
    p = Predictor.load("runs/main-20261126-101900")  # a run directory, a checkpoint file, an export or an ensemble
    p.sentiment(["the movie was a triumph", "dull"])  # [Sentiment(label=3, name='positive', probabilities=(...)), ...]
    p.paraphrase([("How do I learn Python?", "What is the best way to learn Python?")])  # [Paraphrase(...)]
    p.similarity([("A man plays a guitar.", "A person plays music.")])  # [3.87]

Inputs take the training code's own path: the run's tokenizer and an `EncodedTask`, length-sorted
batches (`sorted_batches`), the model's heads under `torch.inference_mode`, results put back in
input order. So the numbers are those of `minbert evaluate` and of the run's prediction files (a
test checks that they are equal). Any number of inputs, none included. An empty string is
encoded as just `[CLS] [SEP]`; a text or pair longer than the model's `max_length` tokens (128
unless the run's config says otherwise) is truncated to it, as in training (a pair loses tokens
from its longer side first); `predict` says which inputs were cut.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from minbert import distributed
from minbert.config import ModelConfig, RunConfig
from minbert.data import Example
from minbert.evaluation import head_outputs
from minbert.multitask import EncodedTask, MultitaskBert
from minbert.tasks import PARAPHRASE_THRESHOLD, SEED_TASKS, TASKS, probability_logit
from minbert.tokenizer import WordPieceTokenizer

# torch: the PyTorch model. onnx: an export's ONNX graphs in onnxruntime. int8: ONNX graphs with
# int8 matrix products in onnxruntime, on the CPU (see onnx_graphs.quantize_graphs).
BACKENDS = ("torch", "onnx", "int8")
# The int8 backend's default batch size: smaller batches ran faster in onnxruntime on 2 CPU cores
# (Quora dev pairs: 982/s at 32, 812/s at 128; docs/RESULTS.md). The others use the run's
# eval_batch_size.
INT8_BATCH = 32


@dataclass(frozen=True)
class Sentiment:
    label: int  # SST-5 class, 0 (very negative) to 4 (very positive): the argmax of the logits
    name: str  # its name, SST_LABEL_NAMES[label]
    probabilities: tuple[float, ...]  # softmax of the five logits, in label order


@dataclass(frozen=True)
class Paraphrase:
    probability: float  # sigmoid of the head's logit
    is_paraphrase: bool  # probability > the threshold the model was evaluated with (0.5)


@dataclass(frozen=True)
class Predictions:
    """What `Predictor.predict` returns: the results (Sentiment, Paraphrase or a float score) in
    input order, and which inputs were truncated to `max_length` tokens."""

    task: str
    results: list
    truncated: list[bool]
    max_length: int

    @property
    def truncated_count(self) -> int:
        return sum(self.truncated)


# A backend: (task, encoded inputs, indices of one batch) -> the head's raw outputs for it.
Backend = Callable[[str, EncodedTask, list[int]], torch.Tensor]


class TorchBackend:
    """The PyTorch model, in eval mode, at the run's precision (fp32 on the CPU)."""

    def __init__(self, model: MultitaskBert, device: torch.device, precision: str = "auto"):
        self.model, self.device, self.precision = model.to(device).eval(), device, precision

    def __call__(self, task: str, data: EncodedTask, indices: list[int]) -> torch.Tensor:
        with distributed.autocast(self.device, self.precision):
            return self.model.predict_batch(task, data, indices, self.device)


def int8_backend(source: MultitaskBert | Path, tokenizer: WordPieceTokenizer, cfg: RunConfig) -> Backend:
    """The int8 backend where no int8 graphs are written yet: the ONNX graphs of `source` (a model,
    exported now, or a directory holding an export's fp32 graphs) made int8 by
    `onnx_graphs.quantize_graphs` in a temporary directory, loaded into onnxruntime, and the
    files removed. Takes some seconds per task; `minbert export --format onnx` writes them once."""
    import shutil
    import tempfile

    from minbert.inference.onnx_graphs import OnnxBackend, export_graphs, quantize_graphs

    directory = Path(tempfile.mkdtemp(prefix="minbert-int8-"))
    try:
        if isinstance(source, MultitaskBert):
            export_graphs(source, tokenizer, directory)  # fp32 and int8 graphs
        else:
            quantize_graphs(source, directory)
        return OnnxBackend(directory, cfg.model, "int8").load_all()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def allowed_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; all cores where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Predictor:
    """A trained model behind three calls: `sentiment`, `paraphrase` and `similarity` (and
    `predict(task, inputs)`, which also reports truncation). Build one with `Predictor.load`."""

    # What `load` read beside the weights (None for a Predictor built by hand): the run's resolved
    # config, and the dev scores stored with the weights. `minbert serve` shows them at /v1/model.
    run_config: RunConfig | None = None
    dev_scores: dict[str, float] | None = None

    def __init__(self, backend: Backend, tokenizer: WordPieceTokenizer, model_cfg: ModelConfig, batch_size: int = 128,
                 threshold: float = PARAPHRASE_THRESHOLD, source: str = "", backend_name: str = "torch"):  # fmt: skip
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"paraphrase threshold {threshold} is not a probability strictly between 0 and 1")
        self.backend, self.tokenizer, self.model_cfg = backend, tokenizer, model_cfg
        self.batch_size, self.threshold, self.source, self.backend_name = batch_size, threshold, source, backend_name

    @classmethod
    def load(cls, path: str | Path, backend: str = "torch", device: str | torch.device | None = None,
             batch_size: int | None = None, overrides: Sequence[str] = ()) -> "Predictor":  # fmt: skip
        """From a run directory (its best.safetensors), a checkpoint file, a directory written by
        `minbert export` (backend "torch" reads its safetensors, "onnx" its ONNX graphs through
        onnxruntime), or one written by `minbert ensemble` (torch only: every member runs on
        each batch, see minbert.ensemble). Backend "int8" runs int8 ONNX graphs in onnxruntime
        on the CPU: an export's `{task}.int8.onnx`, else made from the model when loading
        (`int8_backend`). `overrides` are dotted config keys for a run (e.g.
        `model.checkpoint=DIR` where its base checkpoint, whose vocab.txt it uses, has moved)."""
        from minbert import ensemble
        from minbert.inference import export

        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
        if backend in ("onnx", "int8") and device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"the {backend} backend runs on the CPU (onnxruntime), not {torch.device(device).type}")
        device = torch.device(device) if device else distributed.default_device()
        path = Path(path)
        if ensemble.is_ensemble(path):
            if backend != "torch":
                raise ValueError(f"{path}: an ensemble runs on the torch backend only (its members' PyTorch models)")
            run, dev = ensemble.load_ensemble_dir(path, overrides, device)
            cfg, tokenizer, threshold = run.cfg, run.tokenizer, PARAPHRASE_THRESHOLD
        elif export.is_export(path):
            manifest = export.read_manifest(path)
            cfg, threshold, tokenizer, dev = manifest.cfg, manifest.threshold, export.read_tokenizer(path), manifest.dev
            from minbert.inference.onnx_graphs import OnnxBackend, has_graphs

            if backend == "onnx" or (backend == "int8" and has_graphs(path, "int8")):
                run: Backend = OnnxBackend(path, cfg.model, "int8" if backend == "int8" else "fp32")
            elif backend == "int8":  # an export written without int8 graphs: made now
                source = path if has_graphs(path) else export.load_model(path, manifest)
                run = int8_backend(source, tokenizer, cfg)
            else:
                run = TorchBackend(export.load_model(path, manifest), device, cfg.train.precision)
        else:
            if backend == "onnx":
                raise ValueError(f"{path}: the onnx backend reads a directory written by "
                                 f"`minbert export --checkpoint {path} --out DIR --format onnx`")  # fmt: skip
            from minbert.run_state import load_checkpoint
            from minbert.train import build_trained

            ckpt = load_checkpoint(path)
            model, tokenizer, cfg = build_trained(ckpt, list(overrides), path)
            run = (int8_backend(model, tokenizer, cfg) if backend == "int8"
                   else TorchBackend(model, device, cfg.train.precision))  # fmt: skip
            threshold, dev = PARAPHRASE_THRESHOLD, ckpt.dev
        batch_size = batch_size or (INT8_BATCH if backend == "int8" else cfg.train.eval_batch_size)
        predictor = cls(run, tokenizer, cfg.model, batch_size, threshold, str(path), backend)
        predictor.run_config, predictor.dev_scores = cfg, dev
        return predictor

    def __repr__(self) -> str:
        m = self.model_cfg
        return (f"Predictor({self.source!r}, backend={self.backend_name!r}, pooling={m.pooling!r}, "
                f"pair_encoding={m.pair_encoding!r}, max_length={m.max_length})")  # fmt: skip

    # --- the three questions -------------------------------------------------------------

    def sentiment(self, texts: Sequence[str]) -> list[Sentiment]:
        """SST-5 sentiment of each text: label 0-4, its name, the five class probabilities."""
        return self.predict("sst", texts).results

    def paraphrase(self, pairs: Sequence[tuple[str, str]]) -> list[Paraphrase]:
        """For each (question, question) pair: the probability that they are paraphrases, and the
        decision at the model's threshold."""
        return self.predict("para", pairs).results

    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """STS-B similarity of each (sentence, sentence) pair, a score in [0, 5]."""
        return self.predict("sts", pairs).results

    # --- the machinery -------------------------------------------------------------------

    def predict(self, task: str, inputs: Sequence, progress: bool | None = False) -> Predictions:
        """Results for `task` ("sst": texts; "para", "sts": pairs of texts), in input order,
        with the inputs that were truncated. `progress`: a bar over the batches (None: on
        terminals only)."""
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {tuple(TASKS)}")
        rows = _as_rows(task, inputs)
        if not rows:
            return Predictions(task, [], [], self.model_cfg.max_length)
        examples = [Example(str(i), texts, None) for i, texts in enumerate(rows)]
        m = self.model_cfg
        data = EncodedTask(TASKS[task], examples, self.tokenizer, TASKS[task].pair_encoding or m.pair_encoding, m.max_length)
        outputs = head_outputs(lambda indices: self.backend(task, data, indices), task, data, self.batch_size, progress)
        return Predictions(task, self._results(task, outputs), self._truncated(data, rows), self.model_cfg.max_length)

    def _results(self, task: str, outputs: torch.Tensor) -> list:
        """By the task's kind: (label, name, probabilities) for classification (SST and declared
        tasks), (probability, decision) for binary tasks, the score for regression."""
        spec = TASKS[task]
        if spec.kind == "classification":
            probabilities = torch.softmax(outputs, dim=-1).tolist()
            labels = outputs.argmax(dim=-1).tolist()  # argmax of the logits, as TaskSpec.predict
            names = spec.label_names or tuple(str(k) for k in range(spec.num_classes))
            return [Sentiment(k, names[k], tuple(p)) for k, p in zip(labels, probabilities)]
        if spec.kind == "binary":
            decisions = (outputs > probability_logit(self.threshold)).tolist()  # TaskSpec.predict at 0.5
            return [Paraphrase(p, d) for p, d in zip(torch.sigmoid(outputs).tolist(), decisions)]
        low, high = spec.value_range
        return outputs.clamp(low, high).tolist()  # a cosine head can overshoot its range by an ulp

    def _truncated(self, data: EncodedTask, rows: list[tuple[str, ...]]) -> list[bool]:
        """Which inputs lost tokens to max_length: only those whose encoding reached it are
        tokenised again, without truncation, to find out."""
        limit = self.model_cfg.max_length
        flags = []
        for texts, length in zip(rows, data.lengths):
            if length < limit:
                flags.append(False)
                continue
            sizes = [len(self.tokenizer.tokens(t)) for t in texts]
            flags.append((sum(sizes) + 3 if data.cross else max(sizes) + 2) > limit)  # cross: 3 specials
        return flags


def _as_rows(task: str, inputs: Sequence) -> list[tuple[str, ...]]:
    """Texts (sst) or pairs (para, sts) as tuples of strings; a clear TypeError otherwise."""
    pair = TASKS[task].is_pair
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


def split_inputs(data_dir: str | Path, split: str = "dev", limit: int | None = None,
                 tasks: Sequence[str] = SEED_TASKS) -> dict[str, list]:  # fmt: skip
    """A data split's inputs as the Predictor takes them (sst: texts; para, sts: pairs), file order."""
    return {task: [e.texts if TASKS[task].is_pair else e.texts[0] for e in TASKS[task].read(Path(data_dir), split).examples][:limit]
            for task in tasks}  # fmt: skip
