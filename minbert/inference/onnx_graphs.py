"""One ONNX graph per task (`sst.onnx`, `para.onnx`, `sts.onnx`), and running them with onnxruntime.

Each graph is the encoder, the pooling and the task's head as one function of token tensors
(int64, dynamic batch and sequence axes) to the head's raw output:

| model | inputs | output |
|---|---|---|
| sst | input_ids, attention_mask | logits (B, 5) |
| para / sts, cross-encoded | input_ids, attention_mask, token_type_ids | logit (B,) / score (B,) |
| para / sts, siamese | input_ids_a, attention_mask_a, input_ids_b, attention_mask_b | logit (B,) / score (B,) |

They are written by torch's TorchScript-based exporter (`dynamo=False`), which needs nothing
beyond torch and onnx. Beside each one, `{task}.int8.onnx` is the int8 graph of the `int8`
backend (`quantize_graphs`: dynamic int8 quantisation of the matrix products). onnxruntime and
onnx are the optional extra `minbert[onnx]`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from minbert.config import RunConfig
from minbert.multitask import MultitaskBert
from minbert.tasks.data import pad_batch
from minbert.tasks.encoding import Batch, EncodedTask
from minbert.tasks.spec import TaskSet, TaskSpec
from minbert.tokenizer import WordPieceTokenizer

OPSET = 17
INPUTS = {
    "single": ("input_ids", "attention_mask"),
    "cross": ("input_ids", "attention_mask", "token_type_ids"),
    "siamese": ("input_ids_a", "attention_mask_a", "input_ids_b", "attention_mask_b"),
}
OUTPUTS = {"classification": "logits", "binary": "logit", "regression": "score"}  # by the task's kind


class MissingDependency(ValueError):
    """An optional package that a chosen feature needs is not installed."""


def graph_kind(spec: TaskSpec, pair_encoding: str) -> str:
    """A task's graph inputs: one sequence, a cross-encoded pair, or a siamese pair's two sides."""
    if not spec.is_pair:
        return "single"
    return "siamese" if (spec.pair_encoding or pair_encoding) == "siamese" else "cross"


def graph_path(directory: Path, task: str, precision: str = "fp32") -> Path:
    return Path(directory) / (f"{task}.onnx" if precision == "fp32" else f"{task}.{precision}.onnx")


class TaskGraph(nn.Module):
    """One task of a MultitaskBert as a function of token tensors (see the table above)."""

    def __init__(self, model: MultitaskBert, task: str):
        super().__init__()
        self.model, self.task = model, task
        self.kind = graph_kind(model.tasks[task], model.cfg.pair_encoding)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        def vectors(ids, mask, types=None):  # (B, H): the model's own pooling
            return self.model.embed(Batch(ids, mask, types, False, None, [], padded=True))  # graphs serve padding

        head = self.model.heads[self.task]
        if self.kind == "siamese":
            ids_a, mask_a, ids_b, mask_b = tensors
            return head(vectors(ids_a, mask_a), vectors(ids_b, mask_b))
        return head(vectors(*tensors))


def _example_inputs(kind: str, tokenizer: WordPieceTokenizer) -> tuple[torch.Tensor, ...]:
    """Two real sequences of different lengths, so that the traced graph sees padding."""
    texts = ["a short one", "a longer sentence, to pad the other"]
    if kind == "cross":
        encoded = tokenizer.encode_pairs(texts, texts[::-1])
        ids, mask = pad_batch([e[0] for e in encoded], tokenizer.pad_id)
        return ids, mask, pad_batch([e[1] for e in encoded], 0)[0]
    ids, mask = pad_batch(tokenizer.encode(texts), tokenizer.pad_id)
    return (ids, mask) * (2 if kind == "siamese" else 1)


def export_graphs(model: MultitaskBert, tokenizer: WordPieceTokenizer, directory: Path, int8: bool = True) -> list[Path]:
    """Write `{task}.onnx` for each of the model's tasks into `directory` (the model is put in
    eval mode), and their int8 versions `{task}.int8.onnx` (`quantize_graphs`) unless int8=False."""
    _require("onnx", "the ONNX export")
    model = model.to("cpu").eval()
    paths = []
    for task in model.tasks:
        graph = TaskGraph(model, task)
        output = OUTPUTS[model.tasks[task].kind]
        inputs = INPUTS[graph.kind]
        # The two sides of a siamese pair are padded to lengths of their own: two sequence axes.
        sequence = {name: "sequence" + (name[-2:] if graph.kind == "siamese" else "") for name in inputs}
        axes = {name: {0: "batch", 1: sequence[name]} for name in inputs} | {output: {0: "batch"}}
        with warnings.catch_warnings():  # the TorchScript exporter announces its own deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(graph, _example_inputs(graph.kind, tokenizer), str(graph_path(directory, task)),
                              input_names=list(inputs), output_names=[output], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)  # fmt: skip
        paths.append(graph_path(directory, task))
    if int8:
        paths += quantize_graphs(directory, model.tasks)
    return paths


def quantize_graphs(directory: Path, tasks: TaskSet, out_dir: Path | None = None) -> list[Path]:
    """`{task}.int8.onnx` from each task's `{task}.onnx` in `directory` (written to out_dir, default
    `directory`), by onnxruntime's `quantize_dynamic`: the weights of every matrix product with
    a weight (attention projections, feed-forward, heads) stored as int8, one scale per output
    channel, in 7 bits (`reduce_range`: x86's 8-bit multiply-add can saturate its 16-bit sums
    with full-range weights; it cost the main job's model 0.010 SST accuracy, 0.004 with it);
    their inputs quantised to 8 bits batch by batch at run time. Embeddings, LayerNorms, softmax,
    GELU and the attention products themselves stay fp32. (Fusing attention, LayerNorm and GELU
    first with onnxruntime's transformer optimizer measured slower here: docs/RESULTS.md.)"""
    _require("onnxruntime", "int8 graphs")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    Path(out_dir or directory).mkdir(parents=True, exist_ok=True)
    paths = [graph_path(out_dir or directory, task, "int8") for task in tasks]
    for task, path in zip(tasks, paths):
        quantize_dynamic(str(graph_path(directory, task)), str(path), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True)  # fmt: skip
    return paths


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{what} needs {module}: pip install 'minbert[onnx]'") from None


def has_graphs(directory: Path, tasks: TaskSet, precision: str = "fp32") -> bool:
    return all(graph_path(directory, t, precision).is_file() for t in tasks)


class OnnxBackend:
    """Runs an export's `{task}.onnx` graphs (precision "int8": `{task}.int8.onnx`) with
    onnxruntime on the CPU, with as many threads as torch uses. A graph is loaded the first time
    its task is asked for (`load_all`: now). `cfg`: the run's config (its tasks and model settings)."""

    def __init__(self, directory: Path, cfg: RunConfig, precision: str = "fp32"):
        self.ort = _require("onnxruntime", f"the {'onnx' if precision == 'fp32' else precision} backend")
        self.directory, self.model_cfg, self.precision = Path(directory), cfg.model, precision
        self.tasks = TaskSet.of(cfg.tasks)
        self.sessions: dict = {}
        missing = [graph_path(self.directory, t, precision).name for t in self.tasks
                   if not graph_path(self.directory, t, precision).is_file()]  # fmt: skip
        if missing:
            raise FileNotFoundError(f"{self.directory}: no {', '.join(missing)}; "
                                    "write them with `minbert export --format onnx`")  # fmt: skip

    def session(self, task: str):
        if task not in self.sessions:
            options = self.ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.log_severity_level = 3  # errors only
            self.sessions[task] = self.ort.InferenceSession(str(graph_path(self.directory, task, self.precision)),
                                                            options, providers=["CPUExecutionProvider"])  # fmt: skip
        return self.sessions[task]

    def load_all(self) -> "OnnxBackend":
        """Every task's session now (after which the graph files may go)."""
        for task in self.tasks:
            self.session(task)
        return self

    def __call__(self, task: str, data: EncodedTask, indices: list[int]) -> torch.Tensor:
        kind = graph_kind(self.tasks[task], self.model_cfg.pair_encoding)
        if kind == "siamese":  # each side padded to its own length
            a, b = data.side_batch(0, indices), data.side_batch(1, indices)
            return self._run(task, kind, (a.input_ids, a.attention_mask, b.input_ids, b.attention_mask))
        output = self._run(task, kind, self._inputs(kind, data.batch(indices)))
        if self.model_cfg.symmetric_predict and data.cross:  # both orders averaged, as MultitaskBert.predict_batch
            output = (output + self._run(task, kind, self._inputs(kind, data.batch(indices, [True] * len(indices))))) / 2
        return output

    @staticmethod
    def _inputs(kind: str, batch) -> tuple[torch.Tensor, ...]:
        return (batch.input_ids, batch.attention_mask, batch.token_type_ids)[: len(INPUTS[kind])]

    def _run(self, task: str, kind: str, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        feeds = {name: t.numpy() for name, t in zip(INPUTS[kind], tensors)}
        (output,) = self.session(task).run([OUTPUTS[self.tasks[task].kind]], feeds)
        return torch.from_numpy(output)
