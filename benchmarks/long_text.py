"""Long texts on CFIMDB: dev accuracy and cost of `model.long_text: truncate` against `chunks`.

For each seed, two runs of benchmarks/long_text_cfimdb.yaml: trained on truncated reviews, and
trained on every window (`long_text_train: windows`). Each run's kept model then predicts the dev
set with truncation and with windows (the mean of a review's windows' logits), alternating, twice;
the faster repetition is the time. A model trained on truncated reviews is what
`long_text_train: first` trains (its first window is the truncation), so the first run with
chunks at prediction is that row. Also the reviews' lengths in tokens.

    python benchmarks/long_text.py --out runs/long_text --seeds 0 1

Writes OUT/seed-S-{truncate,windows}/ (ordinary run directories) and OUT/results.json; prints
a table. About 10 + 25 minutes of training per seed on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from minbert.config import load_config
from minbert.runs import encode_all, evaluate_dev, load_trained, needed_splits, read_all
from minbert.training import TrainOptions, train

CONFIG = Path(__file__).with_name("long_text_cfimdb.yaml")
TRAINING = {"truncate": ["model.long_text=truncate"],
            "windows": ["model.long_text=chunks", "model.stride=32", "model.long_text_train=windows"]}  # fmt: skip
PREDICTION = {"truncate": ["model.long_text=truncate"], "chunks": ["model.long_text=chunks", "model.stride=32"]}


def lengths(cfg) -> dict[str, dict]:
    """Each split's review lengths in WordPiece tokens with [CLS] and [SEP], untruncated."""
    from minbert.runs import build_model

    _, tokenizer = build_model(cfg)
    raw = read_all(cfg, needed_splits(cfg, train=True, test=False))
    out = {}
    for split in ("train", "dev"):
        n = sorted(len(ids) for ids in tokenizer.encode([e.texts[0] for e in raw[split]["cfimdb"]], 100_000))
        q = statistics.quantiles(n, n=4)
        out[split] = {"reviews": len(n), "min": n[0], "quartiles": q, "max": n[-1], "mean": round(sum(n) / len(n), 1),
                      "over_128": sum(x > 128 for x in n), "over_256": sum(x > 256 for x in n)}  # fmt: skip
    return out


def predict_times(run_dir: Path, overrides: list[str], repeats: int = 2) -> dict[str, dict]:
    """Dev accuracy, windows and seconds of the run's kept model under each PREDICTION mode."""
    loaded = {}
    for mode, extra in PREDICTION.items():
        model, tokenizer, cfg = load_trained(run_dir / "best.safetensors", overrides + extra)
        dev = encode_all(read_all(cfg, needed_splits(cfg, train=False, test=False)), tokenizer, cfg)["dev"]
        loaded[mode] = (model.eval(), cfg, dev)
    times = {mode: [] for mode in PREDICTION}
    scores = {}
    for _ in range(repeats):
        for mode, (model, cfg, dev) in loaded.items():
            started = time.perf_counter()
            scores[mode] = evaluate_dev(model, dev, cfg, torch.device("cpu"))
            times[mode].append(time.perf_counter() - started)
    return {mode: {"accuracy": scores[mode]["cfimdb"], "dev_windows": len(loaded[mode][2]["cfimdb"]),
                   "predict_s": round(min(times[mode]), 1), "predict_s_all": [round(t, 1) for t in times[mode]]}
            for mode in PREDICTION}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for the runs and results.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-dir", default=None, help="data directory (default: ../shared/data, found)")
    args = parser.parse_args()
    out = Path(args.out)
    base = [f"data.dir={args.data_dir}"] if args.data_dir else []
    results = {"lengths": lengths(load_config(CONFIG, base)), "runs": []}
    print(json.dumps(results["lengths"]), flush=True)
    for seed in args.seeds:
        for name, extra in TRAINING.items():
            run_dir = out / f"seed-{seed}-{name}"
            overrides = [*base, f"train.seed={seed}", *extra]
            scores = train(load_config(CONFIG, overrides), run_dir, TrainOptions(progress=False, overwrite=True))
            row = {"seed": seed, "training": name, "train_s": scores["train_wall_s"],
                   "predict": predict_times(run_dir, base), "run": str(run_dir)}  # fmt: skip
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n| seed | training / prediction | dev accuracy | dev windows | train s | predict s |\n|---|---|---|---|---|---|")
    for row in results["runs"]:
        for mode, p in row["predict"].items():
            print(f"| {row['seed']} | {row['training']} / {mode} | {p['accuracy']:.4f} | {p['dev_windows']} | "
                  f"{row['train_s']} | {p['predict_s']} |")


if __name__ == "__main__":
    main()
