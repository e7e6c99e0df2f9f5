"""`minbert reproduce`: the seed report's Models A-F, run in order, as one table and one chart.

E continues from D's finished run and F from E's (their configs begin with the earlier
model's phases). A model whose run directory already holds metrics.json is not run again,
so a stopped reproduction picks up where it left off.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from minbert.config import load_config
from minbert.configs import resolve_config
from minbert.reports.plots import draw_or_explain, pyplot, save_figure
from minbert.training.recipe import train
from minbert.training.state import TrainOptions

# The seed report's Table 1 (test set): overall, SST, Para, STS.
REPORT = {
    "A": (0.428, 0.364, 0.729, 0.016),
    "B": (0.536, 0.396, 0.524, 0.376),
    "C": (0.653, 0.240, 0.810, 0.818),
    "D": (0.664, 0.284, 0.800, 0.815),
    "E": (0.717, 0.516, 0.828, 0.615),
    "F": (0.738, 0.533, 0.820, 0.726),
}
DESCRIPTION = {
    "A": "frozen encoder, linear SST head, cosine STS",
    "B": "frozen encoder, linear SST head, [abs(u-v), u*v] STS head",  # no pipes: a Markdown table cell
    "C": "fine-tuned, round-robin, linear SST head",
    "D": "C with the 2-layer ReLU SST head",
    "E": "D + sentiment-only epochs",
    "F": "E + similarity-only epochs (final)",
}
CONTINUES = {"E": "D", "F": "E"}


def reproduce(out: Path, models: list[str], overrides: list[str] = (), progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    models = [m.strip().upper() for m in models]
    unknown = [m for m in models if m not in REPORT]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(REPORT)}")
    configs = {m: load_config(resolve_config(f"model_{m.lower()}"), overrides) for m in models}  # all checked first
    results = _load(out)
    for m in models:
        run_dir = out / m
        if (run_dir / "metrics.json").exists():
            print(f"model {m}: already done ({run_dir})")
            results[m] = json.loads((run_dir / "metrics.json").read_text())
            continue
        prev = CONTINUES.get(m)
        init_from = out / prev if prev and (out / prev / "metrics.json").exists() else None
        print(f"model {m}: {DESCRIPTION[m]}" + (f" (continuing from {prev})" if init_from else ""), flush=True)
        started = time.time()
        resume = (run_dir / "config.yaml").exists()  # a run stopped part-way goes on
        scores = train(configs[m], run_dir, TrainOptions(resume=resume, init_from=init_from, progress=progress))
        results[m] = {**scores, "wall_s": round(time.time() - started, 1), "continued_from": prev if init_from else None}
        (run_dir / "metrics.json").write_text(json.dumps(results[m], indent=2) + "\n")
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (out / "table.md").write_text(table)
    print(table)
    draw_or_explain("the chart", lambda: bar_chart(results, out / "scores.png"))
    return results


def _load(out: Path) -> dict:
    path = out / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def markdown_table(results: dict) -> str:
    lines = [
        "| model | what it is | ours (dev) overall / SST / Para / STS | report (test) overall / SST / Para / STS | wall time |",
        "|---|---|---|---|---|",
    ]
    for m in sorted(results):
        r = results[m]
        ours = " / ".join(f"{r[k]:.3f}" for k in ("overall", "sst", "para", "sts"))
        theirs = " / ".join(f"{v:.3f}" for v in REPORT[m])
        wall = f"{r.get('wall_s', 0) / 60:.1f} min" + (f" (after {r['continued_from']})" if r.get("continued_from") else "")
        lines.append(f"| {m} | {DESCRIPTION[m]} | {ours} | {theirs} | {wall} |")
    lines.append("")
    lines.append("overall = (SST acc + Para acc + (STS r + 1) / 2) / 3 for our numbers; the report's column is as printed there.")
    return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: Path) -> None:
    plt = pyplot()
    models = sorted(results)
    keys = ["overall", "sst", "para", "sts"]
    width = 0.2
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, k in enumerate(keys):
        xs = [j + (i - 1.5) * width for j in range(len(models))]
        ax.bar(xs, [results[m][k] for m in models], width, label=f"{k} (ours, dev)")
        ax.scatter(xs, [REPORT[m][i] for m in models], marker="_", s=200, color="black", zorder=3,
                   label="report (test)" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(models)), [f"Model {m}" for m in models])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("Seed report's Models A-F on our data (bars) vs the report (black ticks)")
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
