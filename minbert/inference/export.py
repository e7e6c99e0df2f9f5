"""Exporting a trained model so that it can leave the project.

`--format hf` writes a Hugging Face BERT directory: `config.json`, `model.safetensors` (the
fine-tuned encoder; our parameter names are BertModel's), `vocab.txt`, `tokenizer.json`,
`tokenizer_config.json` and `special_tokens_map.json`, so `transformers.BertModel.from_pretrained(DIR)`
loads it, and `README.md`, its model card in Hugging Face's layout (model_card.py: the dev
scores, the training config, the data, how to load it, limitations). For a mean-pooled model it adds the sentence-transformers module files (`modules.json`,
`sentence_bert_config.json`, `1_Pooling/config.json`), so `SentenceTransformer(DIR).encode`
gives our sentence vectors. `--format onnx` writes one ONNX graph per task, and its int8
version for the int8 backend (see onnx_graphs).

Both also write what minbert needs beside them: `minbert_heads.safetensors` (the task heads;
hf only) and `minbert_config.json` (the run config, the BERT config, the paraphrase threshold,
the dev scores, the fingerprints of the data files the run read), so that `Predictor.load(DIR)`
works from the export alone. Everything is written into a temporary directory first, and put
in place only when complete (and, for ONNX, checked against PyTorch).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from minbert.config import RunConfig, to_dict
from minbert.inference.backends import TorchBackend
from minbert.inference.manifest import FORMAT, HEADS, MANIFEST, VERSION, is_export
from minbert.inference.model_card import RunRecord, card_facts, render_card
from minbert.inference.predictor import Binary, Classification, Predictor, split_inputs
from minbert.model import BertConfig
from minbert.multitask import MultitaskBert
from minbert.run_files import load_checkpoint
from minbert.runs import build_trained
from minbert.tasks.data import DataError, resolve_data_dir
from minbert.tasks.spec import PARAPHRASE_THRESHOLD
from minbert.tokenizer import WordPieceTokenizer

FORMATS = ("hf", "onnx")
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}  # fmt: skip


# ---------------------------------------------------------------------------------------
# Writing


def write_export(model: MultitaskBert, tokenizer: WordPieceTokenizer, cfg: RunConfig, directory: Path, fmt: str,
                 dev: dict | None = None, source: str = "", data: dict | None = None) -> None:  # fmt: skip
    """Write the export files of `fmt` ("hf" or "onnx") into an existing, empty `directory`;
    `data`: the fingerprints of the data files the run read (its checkpoint's).
    (8 parameters: what an export holds, each once.)"""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not one of {FORMATS}")
    directory = Path(directory)
    bert_config = vars(model.bert.config)
    manifest = {"format": FORMAT, "version": VERSION, "paraphrase_threshold": PARAPHRASE_THRESHOLD,
                "config": to_dict(cfg), "bert_config": bert_config, "dev": dev, "source": source,
                "data": data}  # fmt: skip
    _write_json(directory / MANIFEST, manifest)
    _write_tokenizer(tokenizer, cfg, directory)
    if fmt == "onnx":
        from minbert.inference.onnx_graphs import export_graphs

        export_graphs(model, tokenizer, directory)
        return
    from safetensors.torch import save_file

    def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}

    _write_json(directory / "config.json", bert_config | {"model_type": "bert", "architectures": ["BertModel"]})
    save_file(tensors(model.bert), str(directory / "model.safetensors"), metadata={"format": "pt"})
    save_file(tensors(model.heads), str(directory / HEADS), metadata={"format": "pt"})
    if cfg.model.pooling == "mean":
        _write_sentence_transformers(model.bert.config, cfg, directory)
    card = card_facts(RunRecord(cfg, dev, data, bert_config, source))
    (directory / "README.md").write_text(render_card(card), encoding="utf-8")


def _write_json(path: Path, value: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def _write_tokenizer(tokenizer: WordPieceTokenizer, cfg: RunConfig, directory: Path) -> None:
    """vocab.txt and the Hugging Face tokenizer files, saying what minbert's tokenizer does:
    WordPiece with BERT's normaliser, lower-cased (uncased vocab), accents stripped with it."""
    shutil.copyfile(tokenizer.vocab_file, directory / "vocab.txt")
    tokenizer.save(directory / "tokenizer.json")
    _write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase, "strip_accents": None,
        "tokenize_chinese_chars": True, "do_basic_tokenize": True, "model_max_length": cfg.model.max_length,
        **SPECIAL_TOKENS})  # fmt: skip
    _write_json(directory / "special_tokens_map.json", SPECIAL_TOKENS)


def _write_sentence_transformers(bert_config: BertConfig, cfg: RunConfig, directory: Path) -> None:
    """The module files of a sentence-transformers model: the BERT directory itself, then mean
    pooling over the non-padding tokens (our model.mean_pool), no normalisation."""
    _write_json(directory / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])  # fmt: skip
    _write_json(directory / "sentence_bert_config.json",
                {"max_seq_length": cfg.model.max_length, "do_lower_case": False})  # the tokenizer lower-cases
    _write_json(directory / "1_Pooling" / "config.json", {
        "word_embedding_dimension": bert_config.hidden_size, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True})  # fmt: skip


def publish(staged: Path, out_dir: Path) -> None:
    """Move a complete export from `staged` to `out_dir`: a rename when out_dir is new; else
    file by file into an empty directory or an earlier export (so hf and onnx can share one)."""
    out_dir = Path(out_dir)
    umask = os.umask(0)
    os.umask(umask)
    for path in [staged, *staged.rglob("*")]:  # mkdtemp's directory (and safetensors' files) are private
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
    if not out_dir.exists():
        os.replace(staged, out_dir)
        return
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not is_export(out_dir)):
        raise ValueError(f"{out_dir}: exists and is not a minbert export; choose a new or empty directory")
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        target = out_dir / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, fmt: str, overrides: list[str] = (),
                      check_limit: int | None = None, check: bool = True) -> dict | None:  # fmt: skip
    """`minbert export`: a run directory or checkpoint file to `out_dir` in `fmt`. An ONNX export
    is first checked against PyTorch on the dev files (`check_onnx`, up to `check_limit`
    examples per task) and put in place only if they agree; returns that check's report."""
    ckpt = load_checkpoint(checkpoint)
    model, tokenizer, cfg = build_trained(ckpt, list(overrides), checkpoint)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".export", dir=out_dir.parent))
    try:
        write_export(model, tokenizer, cfg, staged, fmt, ckpt.dev, str(checkpoint), ckpt.data)
        report = None
        if fmt == "onnx" and check:
            try:
                report = check_onnx(model, tokenizer, cfg, staged, check_limit)
            except DataError as e:
                raise DataError(e.path, e.line, f"{e.reason} (the ONNX check reads the dev files: pass "
                                                "--data.dir=DIR, or --no-check)") from None  # fmt: skip
            if not report["agree"]:
                raise ValueError(f"the ONNX graphs disagree with PyTorch on the dev files ({report}); nothing written")
        publish(staged, out_dir)
        return report
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def check_onnx(model: MultitaskBert, tokenizer: WordPieceTokenizer, cfg: RunConfig, directory: Path,
               limit: int | None = None, sts_tolerance: float = 1e-4) -> dict:  # fmt: skip
    """onnxruntime on the graphs in `directory` against PyTorch, on the dev files of cfg's data
    directory: the same labels and decisions, scores within `sts_tolerance`, for each of the
    model's tasks. The int8 graphs, where written, are compared too, under "int8": how many labels
    and decisions int8 rounding moved, which the fp32 graphs' agreement does not depend on."""
    from minbert.inference.onnx_graphs import OnnxBackend, has_graphs

    dev = split_inputs(resolve_data_dir(cfg.data.dir), model.tasks, "dev", limit)
    batch = cfg.train.eval_batch_size
    ours = Predictor(TorchBackend(model, torch.device("cpu"), "fp32"), tokenizer, cfg, batch)
    results = {t: ours.predict(t, x).results for t, x in dev.items()}
    report = {}
    for precision in ("fp32", "int8") if has_graphs(directory, model.tasks, "int8") else ("fp32",):
        theirs = Predictor(OnnxBackend(directory, cfg, precision), tokenizer, cfg, batch)
        report[precision] = agreement(results, {t: theirs.predict(t, x).results for t, x in dev.items()}, sts_tolerance)
    if "int8" in report:  # how far int8 rounding moved the outputs: information, not a check
        del report["int8"]["agree"]
    return report.pop("fp32") | report


def agreement(a: dict[str, list], b: dict[str, list], sts_tolerance: float = 1e-4) -> dict:
    """Two sets of results ({task: results}), by each task's kind: the labels (`{task}_labels_differ`)
    and decisions (`{task}_decisions_differ`) that differ, the largest score difference
    (`{task}_max_abs_diff`), and whether they agree (none differ, every score within sts_tolerance)."""
    report: dict = {"examples": {t: len(v) for t, v in a.items()}}
    agree = True
    for task, ours in a.items():
        theirs = b[task]
        if ours and isinstance(ours[0], Classification):
            report[f"{task}_labels_differ"] = n = sum(x.label != y.label for x, y in zip(ours, theirs))
            agree &= n == 0
        elif ours and isinstance(ours[0], Binary):
            report[f"{task}_decisions_differ"] = n = sum(x.positive != y.positive for x, y in zip(ours, theirs))
            agree &= n == 0
        else:
            report[f"{task}_max_abs_diff"] = d = max((abs(x - y) for x, y in zip(ours, theirs)), default=0.0)
            agree &= d <= sts_tolerance
    return report | {"agree": agree}
