"""An export directory as minbert reads it back: `minbert_config.json` (the manifest: the run
config, the BERT config, the paraphrase threshold, the dev scores, the fingerprints of the data
files the run read), the tokenizer, and (hf exports) the model from `model.safetensors` and
`minbert_heads.safetensors`. What writing an export (export.py) and loading one (predictor.py) share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from minbert.checkpoint import CheckpointError
from minbert.config import RunConfig, load_config
from minbert.model import BertConfig, BertModel
from minbert.multitask import MultitaskBert
from minbert.tasks.spec import TaskSet
from minbert.tokenizer import WordPieceTokenizer

MANIFEST = "minbert_config.json"
HEADS = "minbert_heads.safetensors"
FORMAT, VERSION = "minbert-export", 1


@dataclass
class Manifest:
    """minbert_config.json, read back."""

    cfg: RunConfig
    bert_config: dict
    threshold: float
    dev: dict | None
    source: str
    data: dict | None = None  # {file: {bytes, lines, sha256}}; None in an export of an older minbert


def is_export(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise ValueError(f"format {raw.get('format')!r} version {raw.get('version')!r}; "
                             f"this minbert reads {FORMAT!r} {VERSION}")  # fmt: skip
        cfg = load_config(None, [], base=raw["config"])
        threshold = float(raw["paraphrase_threshold"])
        return Manifest(cfg, dict(raw["bert_config"]), threshold, raw.get("dev"), raw.get("source", ""),
                        raw.get("data"))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable minbert export ({type(e).__name__}: {e})") from None


def read_tokenizer(directory: str | Path) -> WordPieceTokenizer:
    return WordPieceTokenizer(Path(directory) / "vocab.txt")


def load_model(directory: str | Path, manifest: Manifest) -> MultitaskBert:
    """The MultitaskBert of an hf export: the encoder from model.safetensors, the heads beside it."""
    from safetensors.torch import load_file

    directory = Path(directory)
    files = [directory / "model.safetensors", directory / HEADS]
    if not all(f.is_file() for f in files):
        raise CheckpointError(f"{directory}: no PyTorch weights ({files[0].name}, {files[1].name}); an ONNX-only "
                              "export is read with backend='onnx'")  # fmt: skip
    model = MultitaskBert(BertModel(BertConfig(**manifest.bert_config)), manifest.cfg.model, TaskSet.of(manifest.cfg.tasks))
    state = {f"bert.{k}": v for k, v in load_file(str(files[0])).items()}
    state |= {f"heads.{k}": v for k, v in load_file(str(files[1])).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: the weights do not fit the model its {MANIFEST} describes "
                              f"({str(e).strip().splitlines()[0]})") from None  # fmt: skip
    return model
