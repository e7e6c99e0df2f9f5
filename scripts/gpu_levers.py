"""Issue 15's levers, measured over seeds in one pass on one CUDA machine (docs/RESULTS.md,
"Issue 15"). Every run is `minbert train` on top of minbert/configs/quick.yaml (the main job
when this was run), one process each, all sharing the GPU:

1. each lever alone and combined, three seeds each; beside them, the best recipe with the
   phrase curriculum (three seeds: it runs through every stage);
2. each run scored again with symmetric prediction (both orders of a pair, averaged);
   ensembles of each lever's seeds and of every run (`minbert ensemble`); the best lever's
   ensemble also writes soft labels for the training sets (the teacher);
3. students distilled from that teacher, three seeds each.

Usage: python scripts/gpu_levers.py OUT DATA [--seeds N] [--budget S] [--levers A,B] [minbert options
for every run, e.g. --model=DIR]. OUT gets runs/, logs/, summary.json (every score) and runs.tar.gz (each
run's scores, logs and prediction files, no weights). --budget is the wall time in seconds after
which unfinished runs are stopped (their finished epochs are still in summary.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PH = "{name: phrases, tasks: [sst_phrases], epochs: 1, steps_per_epoch: 1200, lr: 5.0e-5, head_lr: 5.0e-4, warmup_ratio: 0.1, decay: linear}"
RR = "name: round_robin, epochs: 2, lr: 5.0e-5, head_lr: 5.0e-4, warmup_ratio: 0.1, decay: linear"
TAIL = ("{name: sst_only, tasks: [sst], epochs: 1, lr: 2.0e-5, decay: linear}, "
        "{name: sts_only, tasks: [sts], epochs: 1, lr: 2.0e-5, decay: linear}")  # fmt: skip
BEST = ("{name: multitask, tasks: [sst, para, sts], epochs: 6, sampler: proportional, lr: 5.0e-5, head_lr: 5.0e-4, "
        "warmup_ratio: 0.1, decay: linear}")  # fmt: skip
CURRICULUM = ["--data.phrase_min_words=3", f"--train.phases=[{PH}, {{{RR}, tasks: [sst, para, sts]}}, {TAIL}]"]
PHRASE_TASK = ["--data.phrase_min_words=3", f"--train.phases=[{{{RR}, tasks: [sst, sst_phrases, para, sts]}}, {TAIL}]"]
LEVERS = {  # name: overrides on top of quick.yaml
    "base": [],
    "curriculum": CURRICULUM,
    "phrase_task": PHRASE_TASK,
    "phrase_task_w05": [*PHRASE_TASK, "--train.loss_weights={sst_phrases: 0.5}"],
    "swap": ["--train.swap_pairs=true"],
    "rdrop": ["--train.rdrop=1.0"],
    "combined": [*CURRICULUM, "--train.swap_pairs=true", "--train.rdrop=1.0", "--model.symmetric_predict=true"],
}
LONG = {"best_curriculum": ["--data.phrase_min_words=3", f"--train.phases=[{PH}, {BEST}, {TAIL}]",
                            "--model.symmetric_predict=true"]}  # fmt: skip
SEEDS = [11711, 11712, 11713]
# Dev scores of a run with symmetric prediction (argv: run directory, config overrides).
SYMMETRIC = ("import json, sys; from minbert.runs import predict_checkpoint; "
             "print(json.dumps(predict_checkpoint(sys.argv[1], sys.argv[2:] + ['model.symmetric_predict=true'])))")
KEEP = (".csv", ".json", ".jsonl", ".yaml", ".log")  # what runs.tar.gz keeps of a run directory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("data")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=520.0)
    parser.add_argument("--levers", default=",".join(LEVERS))
    args, extra = parser.parse_known_args()  # the rest: minbert options for every run
    start = time.time()
    out, seeds = Path(args.out), SEEDS[: args.seeds]
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    common = ["--no-progress", f"--data.dir={args.data}", "--train.threads=1", *[a for a in extra if a != "--"]]
    summary: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "levers": LEVERS, "long": LONG, "runs": {}}

    def launch(name: str, argv: list[str]) -> subprocess.Popen:
        log = open(out / "logs" / f"{name}.log", "w")
        return subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT)

    def train(name: str, seed: int, extra: list[str]) -> tuple[str, subprocess.Popen]:
        run = f"{name}_s{seed}"
        return run, launch(run, ["-m", "minbert.cli", "train", "--config", "quick", "--out", str(out / "runs" / run),
                                 f"--train.seed={seed}", *common, *extra])  # fmt: skip

    def wait(procs: dict[str, subprocess.Popen], until: float) -> None:
        for name, p in procs.items():
            try:
                p.wait(timeout=max(1.0, until - (time.time() - start)))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                print(f"{name}: stopped at the time limit", flush=True)

    def record(run: str) -> dict:
        d = out / "runs" / run
        r = {"metrics": read_json(d / "metrics.json"), "timing": read_json(d / "timing.json")}
        if (d / "epochs.jsonl").exists():
            r["epochs"] = [json.loads(line) for line in (d / "epochs.jsonl").read_text().splitlines()]
        return r

    def stage(name: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {name}", flush=True)

    stage("1: levers x seeds, and the long recipe")
    levers = {k: LEVERS[k] for k in args.levers.split(",")}
    short = dict(train(name, s, extra) for name, extra in levers.items() for s in seeds)
    long = dict(train(name, s, extra) for name, extra in LONG.items() for s in seeds)
    wait(short, args.budget * 0.55)
    for run in short:
        summary["runs"][run] = record(run)
    means = {name: mean_overall(summary["runs"], name, seeds) for name in levers}
    summary["mean_overall"] = means

    stage("2: symmetric prediction, ensembles, the teacher's soft labels")
    overrides = [a.removeprefix("--") for a in common if a.startswith("--") and "." in a.split("=")[0]]
    sym = {run: launch(f"{run}_symmetric", ["-c", SYMMETRIC, str(out / "runs" / run), *overrides])
           for run in short if (out / "runs" / run / "best.safetensors").exists()}
    best = max((n for n in means if means[n] is not None), key=lambda n: means[n], default="base")
    summary["teacher"] = best
    ensembles = {f"ens_{name}": [f"{name}_s{s}" for s in seeds] for name in levers}
    ensembles["ens_all"] = list(short)
    ens = {}
    for name, members in ensembles.items():
        members = [m for m in members if (out / "runs" / m / "best.safetensors").exists()]
        if not members:
            continue
        extra = ["--soft-labels", "sst,para,sts,sst_phrases"] if name == f"ens_{best}" else []
        ens[name] = launch(name, ["-m", "minbert.cli", "ensemble", *[str(out / "runs" / m) for m in members], "--out",
                                  str(out / "runs" / name), *extra, *common])  # fmt: skip
    wait(sym, args.budget * 0.75)
    for run in sym:
        summary["runs"][run]["symmetric"] = scores_from_log(out / "logs" / f"{run}_symmetric.log")
    teacher = {k: ens.pop(k) for k in list(ens) if k == f"ens_{best}"}
    wait(teacher, args.budget * 0.72)

    stage(f"3: students of ens_{best}")
    students = {}
    teacher_dir = out / "runs" / f"ens_{best}"
    if (teacher_dir / "metrics.json").exists():
        for name, extra in {"distill_base": [], f"distill_{best}": levers[best]}.items():
            if name == "distill_base" or best != "base":
                students.update(train(name, s, [*extra, f"--train.distill_from={teacher_dir}",
                                                "--train.distill_weight=0.5"]) for s in seeds)  # fmt: skip
    wait(ens, args.budget * 0.8)
    wait({**students, **long}, args.budget)
    for run in [*students, *long]:
        summary["runs"][run] = record(run)
    for name in ensembles:
        summary["runs"][name] = {"metrics": read_json(out / "runs" / name / "metrics.json")}
    long_done = [str(out / "runs" / r) for r in long if (out / "runs" / r / "metrics.json").exists()]
    if long_done and time.time() - start < args.budget + 20:
        stage("ensemble of the long runs")
        name = "ens_best_curriculum"
        wait({name: launch(name, ["-m", "minbert.cli", "ensemble", *long_done, "--out", str(out / "runs" / name), *common])},
             args.budget + 50)  # fmt: skip
        summary["runs"][name] = {"metrics": read_json(out / "runs" / name / "metrics.json")}
    summary["wall_s"] = round(time.time() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    stage("archive")
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for path in sorted((out / "runs").rglob("*")):
            if path.is_file() and path.suffix in KEEP:
                tar.add(path, arcname=str(path.relative_to(out)))
        for path in sorted((out / "logs").glob("*.log")):
            tar.add(path, arcname=str(path.relative_to(out)))
    print(json.dumps({"long_runs_finished": long_done, "mean_overall": means, "teacher": best}), flush=True)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def scores_from_log(path: Path) -> dict | None:
    """The last JSON line `minbert` printed (its scores), if any."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []
    return json.loads(lines[-1]) if lines else None


def mean_overall(runs: dict, name: str, seeds: list[int]) -> float | None:
    values = [runs[f"{name}_s{s}"]["metrics"]["overall"] for s in seeds if (runs[f"{name}_s{s}"].get("metrics") or {}).get("overall")]
    return sum(values) / len(values) if len(values) == len(seeds) else None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
