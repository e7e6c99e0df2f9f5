"""The levers table of docs/RESULTS.md from the summary.json of scripts/gpu_levers.py, plus any
further runs' logs (students trained in a later call; a log's last line of scores is read): mean and spread (sample standard
deviation) over seeds, and the difference from the base, called no difference when smaller
than the larger of the two spreads.

Usage: python scripts/levers_table.py SUMMARY.json [NAME=LOG_GLOB ...]
"""

from __future__ import annotations

import glob
import json
import statistics
import sys
from pathlib import Path

TASKS = ("sst", "para", "sts", "overall")


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def row(name: str, scores: list[dict], walls: list[float], base: list[dict] | None) -> str:
    cells = []
    for key in TASKS:
        values = [s[key] for s in scores]
        cells.append(f"{statistics.mean(values):.3f} ± {spread(values):.3f}")
    overall = [s["overall"] for s in scores]
    if base is None:
        verdict = "(base)"
    else:
        ref = [s["overall"] for s in base]
        diff = statistics.mean(overall) - statistics.mean(ref)
        verdict = f"{diff:+.3f}" + ("" if abs(diff) > max(spread(overall), spread(ref)) else " (no difference)")
    wall = f"{statistics.mean(walls) / 60:.1f} min" if walls else "-"
    return f"| {name} | {len(scores)} | " + " | ".join(cells) + f" | {verdict} | {wall} |"


def main() -> None:
    summary = json.loads(Path(sys.argv[1]).read_text())
    runs = summary["runs"]
    groups: dict[str, list[dict]] = {}
    for run, record in runs.items():
        name, _, seed = run.rpartition("_s")
        if seed.isdigit() and record.get("metrics"):
            groups.setdefault(name, []).append(record)
    extra = dict(arg.split("=", 1) for arg in sys.argv[2:])
    for name, pattern in extra.items():
        groups[name] = []
        for log in sorted(glob.glob(pattern)):
            scores = json.loads([line for line in Path(log).read_text().splitlines() if line.startswith("{")][-1])
            groups[name].append({"metrics": scores, "timing": {"train_wall_s": scores["train_wall_s"]}})
    base = [r["metrics"] for r in groups["base"]]
    print("| recipe | seeds | dev SST | dev Para | dev STS r | dev overall | vs base | train wall (mean) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, records in groups.items():
        scores = [r["metrics"] for r in records]
        walls = [r["timing"]["train_wall_s"] for r in records if r.get("timing")]
        print(row(name, scores, walls, None if name == "base" else base))
        symmetric = [r["symmetric"] for r in records if r.get("symmetric")]
        if symmetric:
            print(row(f"{name}, symmetric prediction", symmetric, [], base))
    print()
    print("| ensemble | members | dev SST | dev Para | dev STS r | dev overall |")
    print("|---|---|---|---|---|---|")
    for run, record in runs.items():
        if run.startswith("ens_") and record.get("metrics"):
            m = record["metrics"]
            print(f"| {run} | {len(m.get('members', []))} | " + " | ".join(f"{m[k]:.4f}" for k in TASKS) + " |")


if __name__ == "__main__":
    main()
