"""A trained model's card: the facts its files hold (`card_facts`), and README.md in the Hugging
Face model-card layout (`render_card`): YAML front matter (library, tags, base model, an empty
license for the user, `model-index` with each task's dev score), then the training config, the
data, how to load it, and its limitations.

`minbert export --format hf` writes the card beside the weights; `minbert serve` answers the
same facts at GET /v1/card and shows them on its page. Both take them from `card_facts`, which
reads only what the run recorded (`RunRecord`: the resolved config, the dev scores stored with
the weights, the fingerprints of the data files, the encoder's sizes), so a number on the card
is the run's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from minbert.config import RunConfig, to_dict
from minbert.tasks.spec import TaskSet, TaskSpec

EMBEDDED_BASE = "sentence-transformers/all-MiniLM-L6-v2"  # the checkpoint model.checkpoint=None means
LICENSE_NOTE = ("left empty for you to fill in: the license your use of the base model's weights and of the "
                "training data allows")  # fmt: skip
# Hugging Face task types (model-index `task.type`), by a task's kind and input.
HF_TASK = {("classification", False): "text-classification", ("classification", True): "text-classification",
           ("binary", False): "text-classification", ("binary", True): "text-classification",
           ("regression", False): "text-classification", ("regression", True): "sentence-similarity"}  # fmt: skip
DATASETS = {"sst": "SST-5 (Stanford Sentiment Treebank, 5 classes)", "para": "Quora Question Pairs",
            "sts": "STS-B (Semantic Textual Similarity Benchmark)"}  # built-in tasks; CS224N's splits  # fmt: skip


@dataclass(frozen=True)
class RunRecord:
    """What a trained model's files say about its run: the resolved config, the dev scores of
    these weights, the fingerprints of the data files the run read ({file: {bytes, lines,
    sha256}}, None for an older minbert), the encoder's BertConfig as a dict (None: unknown,
    e.g. an ensemble), and the checkpoint the weights came from."""

    cfg: RunConfig
    dev: dict | None
    data: dict | None
    bert_config: dict | None
    source: str


def model_name(source: str) -> str:
    """A run's name: its directory (a run directory, or the one holding a .safetensors file)."""
    path = Path(source)
    return (path.parent.name if path.suffix == ".safetensors" else path.name) or "minbert-model"


def base_model(cfg: RunConfig) -> str:
    """The checkpoint the run started from: the embedded MiniLM's Hub name, or the directory's name."""
    return EMBEDDED_BASE if cfg.model.checkpoint is None else Path(cfg.model.checkpoint).name


def _task_facts(spec: TaskSpec, dev: dict | None, data: dict | None) -> dict:
    scores = dev or {}
    files = {split: {"file": name, **({k: data[name][k] for k in ("lines", "bytes")} if data and name in data else {})}
             for split, name in spec.files.items()}  # fmt: skip
    return {
        "name": spec.name,
        "dataset": DATASETS.get(spec.name, spec.name) if spec.is_builtin else spec.name,
        "kind": spec.kind,
        "input": "pairs" if spec.is_pair else "texts",
        "hf_task": HF_TASK[(spec.kind, spec.is_pair)],
        "metric": spec.primary,
        "dev": scores.get(spec.name),
        "other_metrics": {m: scores[f"{spec.name}_{m}"] for m in spec.metrics if f"{spec.name}_{m}" in scores},
        "files": files,
    }


def card_facts(record: RunRecord) -> dict:
    """Everything the card and the serve page show, as plain JSON values."""
    cfg, bert = record.cfg, record.bert_config or {}
    tasks = TaskSet.of(cfg.tasks)
    mean = cfg.model.pooling == "mean"
    encoder = {k: bert.get(k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                                         "vocab_size")}  # fmt: skip
    phases = [{"name": p.name, "tasks": list(p.tasks), "epochs": p.epochs, "lr": p.lr, "head_lr": p.head_lr,
               "mode": p.mode, "sampler": p.sampler} for p in cfg.train.phases]  # fmt: skip
    read = sorted((record.data or {}).items())
    return {
        "name": model_name(record.source),
        "source": record.source,
        "library_name": "sentence-transformers" if mean else "transformers",
        "tags": ["minbert", "bert", *sorted({HF_TASK[(s.kind, s.is_pair)] for s in tasks.values()}),
                 *(["sentence-transformers"] if mean else [])],  # fmt: skip
        "base_model": base_model(cfg),
        "license": None,
        "license_note": LICENSE_NOTE,
        "tasks": [_task_facts(spec, record.dev, record.data) for spec in tasks.values()],
        "overall": (record.dev or {}).get("overall"),
        "training": {"encoder": encoder, "pooling": cfg.model.pooling, "pair_encoding": cfg.model.pair_encoding,
                     "max_length": cfg.model.max_length, "long_text": cfg.model.long_text,
                     "batch_size": cfg.train.batch_size, "seed": cfg.train.seed, "precision": cfg.train.precision,
                     "phases": phases},  # fmt: skip
        "config": to_dict(cfg),
        "data": [{"file": name, "lines": f.get("lines"), "bytes": f.get("bytes"), "sha256": f.get("sha256")}
                 for name, f in read],  # fmt: skip
        "usage": usage(mean),
        "limitations": limitations(cfg, tasks),
    }


def usage(mean: bool) -> dict[str, str]:
    """How to load an hf export: with minbert (every task head), and with transformers (the encoder)."""
    minbert = ('from minbert import Predictor\n\n'
               'p = Predictor.load("path/to/this/directory")  # the encoder and every task head\n'
               'p.predict("sst", ["the movie was a triumph"]).results')  # fmt: skip
    vector = ("mask = batch[\"attention_mask\"].unsqueeze(-1).float()\n"
              "vectors = (out.last_hidden_state * mask).sum(1) / mask.sum(1)  # minbert's mean pooling"
              if mean else "vectors = out.pooler_output  # minbert's [CLS] pooling: tanh(W h_CLS)")  # fmt: skip
    transformers = ('from transformers import AutoModel, AutoTokenizer\n\n'
                    'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")\n'
                    'model = AutoModel.from_pretrained("path/to/this/directory")  # the encoder only\n'
                    'batch = tokenizer(["the movie was a triumph"], return_tensors="pt")\n'
                    f'out = model(**batch)\n{vector}')  # fmt: skip
    out = {"minbert": minbert, "transformers": transformers}
    if mean:
        out["sentence-transformers"] = ('from sentence_transformers import SentenceTransformer\n\n'
                                        'SentenceTransformer("path/to/this/directory").encode(["the movie was a triumph"])')  # fmt: skip
    return out


def limitations(cfg: RunConfig, tasks: TaskSet) -> list[str]:
    cut = ("cut into windows of that length, whose outputs are averaged (model.long_text: chunks)"
           if cfg.model.long_text == "chunks" else "truncated to it")  # fmt: skip
    return [
        "The scores are on the dev sets, which also chose these weights (the best dev overall of the run): "
        "an optimistic estimate. There are no test-set scores (the test files carry no labels).",
        f"Texts longer than {cfg.model.max_length} WordPiece tokens are {cut}; a pair loses tokens from its longer side.",
        "English only, lower-cased WordPiece vocabulary. Trained on "
        + ", ".join(DATASETS.get(s.name, s.name) if s.is_builtin else s.name for s in tasks.values())
        + "; other domains are not measured.",
        "transformers loads the encoder only; the task heads are minbert's (minbert_heads.safetensors) "
        "and need minbert's Predictor.",
        "Biases the base model and the data carry are not measured here.",
    ]


# ---------------------------------------------------------------------------------------
# README.md


def front_matter(facts: dict) -> dict:
    """The YAML header of the card (Hugging Face's model-card metadata), license aside."""
    results = []
    for task in facts["tasks"]:
        if task["dev"] is None:
            continue
        metrics = [{"type": task["metric"], "value": task["dev"], "name": f"dev {task['metric']}"}]
        metrics += [{"type": m, "value": v, "name": f"dev {m}"} for m, v in task["other_metrics"].items()]
        results.append({"task": {"type": task["hf_task"], "name": task["name"]},
                        "dataset": {"name": task["dataset"], "type": task["name"], "split": "dev"},
                        "metrics": metrics})  # fmt: skip
    return {"library_name": facts["library_name"], "tags": facts["tags"], "base_model": facts["base_model"],
            "model-index": [{"name": facts["name"], "results": results}]}  # fmt: skip


def _dump(value: dict) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _score(value: float | None) -> str:
    return "not stored" if value is None else f"{value:.4f}"


def render_card(facts: dict) -> str:
    """README.md: the front matter, then the sections."""
    head = front_matter(facts)
    index = head.pop("model-index")
    t = facts["training"]
    enc = t["encoder"]
    lines = ["---", _dump(head).rstrip(), f"license:  # {facts['license_note']}", _dump({"model-index": index}).rstrip(),
             "---", "", f"# {facts['name']}", "",
             f"A BERT encoder fine-tuned with minbert from `{facts['base_model']}`, one head per "
             f"task: {', '.join(task['name'] for task in facts['tasks'])}. Trained from `{facts['source']}`.", "",
             "## Dev scores", "", "| task | data | metric | dev |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {x['name']} | {x['dataset']} | {x['metric']} | {_score(x['dev'])} |" for x in facts["tasks"]]
    lines += ["", f"Overall: {_score(facts['overall'])}.", "", "## Training config", ""]
    size = (f"{enc['num_hidden_layers']} layers, hidden {enc['hidden_size']}, {enc['num_attention_heads']} heads, "
            f"FFN {enc['intermediate_size']}, vocabulary {enc['vocab_size']}" if enc.get("hidden_size") else "not recorded")  # fmt: skip
    lines += [f"- Encoder: {size}; pooling `{t['pooling']}`, pairs `{t['pair_encoding']}`, max length "
              f"{t['max_length']} tokens (long texts: `{t['long_text']}`).",
              f"- Batch size {t['batch_size']}, seed {t['seed']}, precision `{t['precision']}`.", "",
              "| phase | tasks | epochs | lr | head lr | mode | sampler |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {p['name']} | {', '.join(p['tasks'])} | {p['epochs']} | {p['lr']:g} | "
              f"{'same' if p['head_lr'] is None else format(p['head_lr'], 'g')} | {p['mode']} | {p['sampler']} |"
              for p in t["phases"]]  # fmt: skip
    lines += ["", "<details><summary>The resolved config (config.yaml)</summary>", "", "```yaml",
              _dump(facts["config"]).rstrip(), "```", "", "</details>", "", "## Data", ""]  # fmt: skip
    lines += [f"- {x['name']} ({x['dataset']}): " + ", ".join(
        f"{split} `{f['file']}`" + (f" ({f['lines']:,} lines)" if f.get("lines") is not None else "") for split, f in x["files"].items())
        for x in facts["tasks"]]  # fmt: skip
    if facts["data"]:
        lines += ["", "Every file the run read, as fingerprinted then:", "", "| file | lines | bytes | sha256 |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| `{f['file']}` | {f['lines']:,} | {f['bytes']:,} | `{f['sha256'][:16]}…` |" for f in facts["data"]]
    else:
        lines += ["", "The run recorded no fingerprints of its data files (an older minbert)."]
    lines += ["", "## How to load it", "", "With minbert:", "", "```python", facts["usage"]["minbert"], "```", "",
              "With transformers:", "", "```python", facts["usage"]["transformers"], "```", ""]  # fmt: skip
    if "sentence-transformers" in facts["usage"]:
        lines += ["With sentence-transformers:", "", "```python", facts["usage"]["sentence-transformers"], "```", ""]
    lines += ["## Limitations", ""] + [f"- {x}" for x in facts["limitations"]]
    lines += ["", "## License", "", f"The `license` field above is {facts['license_note']}.", ""]
    return "\n".join(lines)

