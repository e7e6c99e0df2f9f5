"""The model card: README.md of `minbert export --format hf` (Hugging Face's layout: YAML front
matter, then sections) holds the run's own dev scores, config and data; `minbert serve` answers
the same facts at /v1/card, behind its API key like the other routes."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import request, serving

from minbert import Predictor
from minbert.cli import main as cli_main
from minbert.inference.model_card import EMBEDDED_BASE, RunRecord, base_model, card_facts, front_matter
from minbert.inference.serve import create_app
from minbert.config import load_config
from minbert.run_files import load_checkpoint

SECTIONS = ["## Dev scores", "## Training config", "## Data", "## How to load it", "## Limitations"]
KEY = "card-test-key-0123456789"


@pytest.fixture(scope="module")
def exports(tiny_runs, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("card")
    for name, run in tiny_runs.items():
        assert cli_main(["export", "--checkpoint", str(run), "--out", str(out / name), "--format", "hf"]) == 0
    return {name: out / name for name in tiny_runs}


def split_card(text: str) -> tuple[dict, str]:
    """(the front matter, parsed as YAML; the Markdown after it)."""
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_the_card_holds_the_runs_dev_scores_in_the_front_matter(tiny_runs, exports, tiny_checkpoint):
    for name, run in tiny_runs.items():
        meta, body = split_card((exports[name] / "README.md").read_text(encoding="utf-8"))
        metrics = json.loads((run / "metrics.json").read_text())  # the run's own record, to 4 places
        stored = load_checkpoint(run).dev  # the scores stored with the best weights, in full
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert meta["base_model"] == Path(tiny_checkpoint).name  # the checkpoint the run started from
        assert "license" in meta and meta["license"] is None  # left for the user
        assert meta["library_name"] == ("sentence-transformers" if config["model"]["pooling"] == "mean" else "transformers")
        assert "minbert" in meta["tags"]
        (index,) = meta["model-index"]
        assert index["name"] == run.name
        scores = {r["task"]["name"]: r["metrics"][0] for r in index["results"]}
        assert set(scores) == {"sst", "para", "sts"}
        for task, metric in scores.items():
            assert metric["value"] == stored[task] and round(metric["value"], 4) == metrics[task]
        assert scores["sst"]["type"] == scores["para"]["type"] == "accuracy" and scores["sts"]["type"] == "pearson"
        assert {r["task"]["type"] for r in index["results"]} == {"text-classification", "sentence-similarity"}
        for section in SECTIONS:
            assert f"\n{section}\n" in body, section
        assert "license` field above is left empty for you to fill in" in body
        assert f"Overall: {metrics['overall']:.4f}." in body


def test_the_card_states_the_config_and_the_data_the_run_read(tiny_runs, exports):
    run, export = tiny_runs["siamese"], exports["siamese"]
    _, body = split_card((export / "README.md").read_text(encoding="utf-8"))
    data = json.loads((run / "data.json").read_text())  # the fingerprints the run recorded
    assert data
    for file, fingerprint in data.items():
        assert f"| `{file}` | {fingerprint['lines']:,} | {fingerprint['bytes']:,} | `{fingerprint['sha256'][:16]}" in body
    assert f"- sst (SST-5 (Stanford Sentiment Treebank, 5 classes)): train `ids-sst-train.csv` ({data['ids-sst-train.csv']['lines']:,} lines)" in body
    config_block = body.split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(config_block) == yaml.safe_load((run / "config.yaml").read_text())  # the resolved config
    assert "pooling `cls`, pairs `siamese`" in body
    assert "Predictor.load(" in body and "AutoModel.from_pretrained(" in body
    assert "SentenceTransformer(" not in body  # [CLS]-pooled: no sentence-transformers files, no snippet
    mean_body = (exports["cross"] / "README.md").read_text(encoding="utf-8")
    assert "SentenceTransformer(" in mean_body and (exports["cross"] / "modules.json").is_file()


def test_the_base_model_of_the_embedded_checkpoint_is_its_hub_name(tmp_path):
    assert base_model(load_config(None, [])) == EMBEDDED_BASE == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model(load_config(None, [f"model.checkpoint={tmp_path / 'my-bert'}"])) == "my-bert"
    facts = card_facts(RunRecord(load_config(None, []), None, None, None, "runs/x/best.safetensors"))
    assert facts["name"] == "x" and all(t["dev"] is None for t in facts["tasks"])
    assert front_matter(facts)["model-index"][0]["results"] == []  # no scores stored: none claimed


def test_serve_answers_the_cards_facts_behind_its_api_key(tiny_runs, exports):
    run = tiny_runs["cross"]
    from_run, from_export = Predictor.load(run), Predictor.load(exports["cross"])
    meta, _ = split_card((exports["cross"] / "README.md").read_text(encoding="utf-8"))
    with serving(create_app(from_run)) as url:
        status, facts = request(url, "/v1/card")
    assert status == 200
    assert front_matter(facts) == {k: v for k, v in meta.items() if k != "license"}  # the card's header, exactly
    assert facts["data"] and facts["config"] == yaml.safe_load((run / "config.yaml").read_text())
    with serving(create_app(from_export, api_key=KEY)) as url:
        assert request(url, "/v1/card")[0] == 401
        status, served_from_export = request(url, "/v1/card", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200 and served_from_export == facts  # an export is served with the facts of its run
