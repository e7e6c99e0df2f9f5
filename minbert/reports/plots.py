"""Pictures of a run, drawn from the files it wrote; each PNG is written atomically.

- `curves.png` (drawn by `train` at the end of a run, and by `minbert plot RUN`): the training
  loss of each task over optimizer steps and the dev scores at each epoch's end, phases marked.
- `sst-confusion.png`, `sts-scatter.png`, `para-threshold.png` (drawn by `minbert evaluate`,
  and by `minbert plot` where the run directory holds `dev-outputs.json`): the dev outputs.

The numbers behind each picture come from small pure functions (`curve_data`, `rolling_mean`,
`confusion_matrix`, `threshold_accuracy`) that the tests check without drawing. matplotlib
(the `plots` extra) is imported only when a picture is drawn, with the Agg backend (no display).
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from minbert.tasks.metrics import pearson
from minbert.run_files import atomic_write
from minbert.tasks.spec import SST_CLASS_NAMES

CURVES = "curves.png"
DEV_OUTPUTS = "dev-outputs.json"  # per task: ids, gold, prediction, soft (see write_dev_outputs)
EVALUATION_PICTURES = {"sst": "sst-confusion.png", "sts": "sts-scatter.png", "para": "para-threshold.png"}
NO_MATPLOTLIB = "matplotlib is not installed (pip install 'minbert[plots]')"

TASK_STYLE = {"sst": ("SST", "tab:blue"), "para": ("Paraphrase", "tab:orange"), "sts": ("STS", "tab:green"),
              "mlm": ("MLM", "tab:purple"), "sst_phrases": ("SST phrases", "tab:cyan")}  # fmt: skip
# Drawn in this order, overall first and largest, so that a score equal to another stays in sight.
DEV_LINES = (("overall", "overall", "black", "D"), ("sst", "SST accuracy", "tab:blue", "o"),
             ("para", "Para accuracy", "tab:orange", "s"), ("sts", "STS Pearson r", "tab:green", "^"))  # fmt: skip
# Sized to stay legible at about 800 px wide: a 10.5 inch figure scaled to 800 px shows
# 12 pt text at about 13 px.
RC = {"font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13, "legend.fontsize": 12, "legend.title_fontsize": 12,
      "xtick.labelsize": 12, "ytick.labelsize": 12, "axes.spines.top": False, "axes.spines.right": False}  # fmt: skip
DPI = 150


# ---------------------------------------------------------------------------------------
# Drawing helpers


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display); ImportError without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def styled_pyplot():
    plt = pyplot()
    with plt.rc_context(RC):
        yield plt


def save_figure(fig, path: Path, dpi: int = DPI) -> Path:
    """The figure as a PNG at `path`, written to a temporary file and renamed; then closed."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)
    return Path(path)


def draw_or_explain(what: str, draw: Callable[[], object]) -> bool:
    """Run `draw`; without matplotlib, or when drawing fails, print one line instead of raising:
    a picture never stops a run."""
    try:
        draw()
        return True
    except ImportError:
        print(f"{what}: not drawn, {NO_MATPLOTLIB}", flush=True)
    except Exception as e:  # noqa: BLE001 - any drawing error: said, then the run goes on
        print(f"{what}: not drawn ({type(e).__name__}: {e})", flush=True)
    return False


# ---------------------------------------------------------------------------------------
# curves.png: training loss and dev scores of a run


def read_jsonl(path: Path) -> list[dict]:
    """The records of a log; a last line cut short (a run killed while writing it) is left out."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    with contextlib.suppress(json.JSONDecodeError):
        records += [json.loads(line) for line in lines[-1:]]
    return records


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value and the window - 1 before it (of fewer at the start)."""
    sums = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(0, end - window)
    return (sums[end] - sums[start]) / (end - start)


def smoothing_window(n: int) -> int:
    """The rolling-mean window for a task logged n times: about n / 10, rounded down to a round number."""
    return max(w for w in (1, 2, 5, 10, 20, 50, 100) if w <= max(1.0, n / 10))


@dataclass
class Phase:
    name: str
    index: int
    start: int  # the optimizer step before the phase's first step
    end: int  # the step at the end of its last logged epoch


@dataclass
class TaskLoss:
    steps: np.ndarray  # the steps that trained this task
    loss: np.ndarray  # the loss of each step's batch
    phase: np.ndarray  # the position in Curves.phases of each step (len(phases): after the last logged epoch)
    smoothed: np.ndarray  # rolling mean of `loss` within each phase (a new phase starts it again)


@dataclass
class Curves:
    losses: dict[str, TaskLoss]  # first-trained task first
    window: int  # of the rolling mean, in batches of one task
    epochs: list[dict]  # the epochs.jsonl records, in step order
    phases: list[Phase] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)  # the evals.jsonl records (in-epoch dev probes), in step order

    @property
    def best(self) -> dict | None:
        """The evaluation whose weights are best.safetensors: the last one marked best (an
        epoch's end, or an in-epoch probe scored on the full dev sets)."""
        marked = sorted((r for r in [*self.epochs, *self.probes] if r.get("best")), key=lambda r: r["step"])
        return marked[-1] if marked else None


def curve_data(run_dir: str | Path) -> Curves:
    """The numbers behind curves.png, from steps.jsonl, epochs.jsonl and evals.jsonl. A step or
    epoch logged twice (by a run stopped and resumed before its logs were cut back) counts once,
    the later line."""
    run_dir = Path(run_dir)
    if not (run_dir / "steps.jsonl").exists() and not (run_dir / "epochs.jsonl").exists():
        raise FileNotFoundError(f"{run_dir}: no steps.jsonl or epochs.jsonl (not a minbert run directory)")
    steps = sorted({r["step"]: r for r in read_jsonl(run_dir / "steps.jsonl")}.values(), key=lambda r: r["step"])
    epochs = {(r["phase_index"], r["epoch"]): r for r in read_jsonl(run_dir / "epochs.jsonl")}
    epochs = sorted(epochs.values(), key=lambda r: (r["step"], r["phase_index"], r["epoch"]))
    phases: list[Phase] = []
    for r in epochs:
        if phases and phases[-1].index == r["phase_index"]:
            phases[-1].end = r["step"]
        else:
            phases.append(Phase(r["phase"], r["phase_index"], phases[-1].end if phases else 0, r["step"]))
    tasks = list(dict.fromkeys(r["task"] for r in steps))  # first-trained first
    window = smoothing_window(max((sum(r["task"] == t for r in steps) for t in tasks), default=1))
    ends = [ph.end for ph in phases]
    losses = {}
    for task in tasks:
        x = np.array([r["step"] for r in steps if r["task"] == task])
        y = np.array([r["loss"] for r in steps if r["task"] == task], dtype=np.float64)
        phase = np.searchsorted(ends, x, side="left")  # the first phase that ends at or after the step
        smoothed = np.concatenate([rolling_mean(y[phase == i], window) for i in np.unique(phase)])
        losses[task] = TaskLoss(x, y, phase, smoothed)
    probes = sorted({r["step"]: r for r in read_jsonl(run_dir / "evals.jsonl")}.values(), key=lambda r: r["step"])
    return Curves(losses, window, epochs, phases, probes)


def draw_curves(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """curves.png (default: in the run directory): left, the training loss per task against the
    optimizer step (each batch faint, a rolling mean bold; log scale, as the tasks' losses differ
    tenfold); right, the dev scores at each epoch's end against the same steps, the overall of
    any in-epoch probes (hollow), the kept checkpoint marked. Phases are shaded in turn and named
    in both panels."""
    run_dir = Path(run_dir)
    c = curve_data(run_dir)
    with styled_pyplot() as plt:
        from matplotlib.ticker import FuncFormatter

        fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(10.5, 5.2), sharex=True, layout="constrained")
        for task, t in c.losses.items():
            label, color = TASK_STYLE.get(task, (task, other_task_color(task)))
            ax_loss.plot(*_by_phase(t.steps, t.loss, t.phase), color=color, alpha=0.25, lw=0.8)
            ax_loss.plot(*_by_phase(t.steps, t.smoothed, t.phase), color=color, lw=2.2, label=label)
        ax_loss.set_yscale("log")  # labelled 0.1, 0.2, 0.3, 0.5, 1, 2, ... as plain numbers
        if c.losses:  # from a labelled tick to a labelled tick
            values = np.concatenate([t.loss for t in c.losses.values()])
            ax_loss.set_ylim(_nice(values[values > 0].min(), down=True), _nice(values.max(), down=False))
        ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_loss.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if _mantissa(v) in (2, 3, 5) else ""))
        ax_loss.set(xlabel="optimizer step", ylabel="training loss (log scale)", title="Training loss per task")
        if c.losses:
            smoothing = f"faint: each batch; bold: mean of the task's last {c.window}" if c.window > 1 else "each batch"
            ax_loss.legend(title=smoothing, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(c.losses))

        dev = [r for r in c.epochs if r.get("dev")]
        xs = [r["step"] for r in dev]
        lines = dev_lines(dev)
        for key, label, color, marker in lines:
            big = key == "overall"
            ax_dev.plot(xs, [r["dev"].get(key, np.nan) for r in dev], marker=marker, ms=9 if big else 6, color=color,
                        label=label, lw=3 if big else 1.8)  # fmt: skip
        if c.probes:
            ax_dev.plot([r["step"] for r in c.probes], [r["probe"]["overall"] for r in c.probes], ls="none",
                        marker="D", ms=5, mfc="none", color="black", label="overall, in-epoch dev probe")  # fmt: skip
        if c.best is not None and c.best.get("dev"):  # a line, not a marker: it hides no point
            ax_dev.axvline(c.best["step"], color="goldenrod", ls=":", lw=2.5, zorder=1,
                           label=f"kept checkpoint ({c.best['dev']['overall']:.3f})")  # fmt: skip
        if not dev:
            ax_dev.text(0.5, 0.5, "no dev evaluation logged yet", transform=ax_dev.transAxes, ha="center")
        low = min([0.0] + [r["dev"][k] for r in dev for k, *_ in lines if k in r["dev"]])
        ax_dev.set_ylim(low - 0.02 if low < 0 else 0.0, 1.0)
        ax_dev.set(xlabel="optimizer step" + ("" if c.probes else " (at the epoch's end)"),
                   ylabel="dev score (accuracy, or Pearson r)",
                   title="Dev scores at epoch ends" + (" and probes" if c.probes else ""))  # fmt: skip
        ax_dev.grid(axis="y", alpha=0.3)
        if dev:
            ax_dev.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        last = max([c.phases[-1].end if c.phases else 0] + [int(t.steps[-1]) for t in c.losses.values()])
        ax_loss.set_xlim(0, max(last, 1) * 1.02)
        _mark_phases(fig, ax_loss, c.phases)
        _mark_phases(fig, ax_dev, c.phases)
        return save_figure(fig, Path(path) if path else run_dir / CURVES)


def dev_lines(dev: list[dict]) -> list[tuple[str, str, str, str]]:
    """(key, label, colour, marker) of each score in the dev records: overall first, then the
    built-in tasks' scores in DEV_LINES' styles, then any other task's (a run of the task files
    in configs/tasks/, say), named by its key."""
    keys = [k for r in dev for k, v in r["dev"].items() if isinstance(v, (int, float))]
    known = [line for line in DEV_LINES if line[0] in keys]
    others = [k for k in dict.fromkeys(keys) if k not in {line[0] for line in DEV_LINES}]
    return known + [(k, k, other_task_color(k), "ov^<>"[i % 5]) for i, k in enumerate(others)]


def other_task_color(task: str) -> str:
    """A colour for a task outside TASK_STYLE, the same in both panels and in every run."""
    palette = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:gray")
    return palette[zlib.crc32(task.encode()) % len(palette)]


def _by_phase(x: np.ndarray, y: np.ndarray, phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y (clipped above 0 for the log scale) with a gap where the phase changes: a task's
    line does not bridge a phase that did not train it."""
    cuts = np.flatnonzero(np.diff(phase)) + 1
    return np.insert(x.astype(float), cuts, np.nan), np.insert(np.maximum(y, 1e-4), cuts, np.nan)


def _mantissa(v: float) -> float:
    return round(v / 10 ** np.floor(np.log10(v)), 6) if v > 0 else 0.0


def _nice(v: float, down: bool) -> float:
    """The nearest of ..., 0.5, 1, 2, 3, 5, 10, ... below (or above) v."""
    steps = [m * 10.0**e for e in range(int(np.floor(np.log10(v))) - 1, int(np.floor(np.log10(v))) + 2)
             for m in (1, 2, 3, 5)]  # fmt: skip
    return max(x for x in steps if x <= v) if down else min(x for x in steps if x >= v)


def _mark_phases(fig, ax, phases: list[Phase]) -> None:
    """Every other phase shaded, a dashed line where each new phase starts, and the phases'
    names above the panel (every other one a row higher where neighbours would overlap)."""
    from matplotlib.transforms import blended_transform_factory

    if len(phases) < 2:  # one phase: nothing to tell apart
        return
    where = blended_transform_factory(ax.transData, ax.transAxes)
    names = []
    for i, ph in enumerate(phases):
        if i % 2:
            ax.axvspan(ph.start, ph.end, color="0.92", zorder=0, lw=0)
        if i:
            ax.axvline(ph.start, color="0.45", ls="--", lw=1, zorder=1)
        names.append(ax.text((ph.start + ph.end) / 2, 1.01, ph.name, transform=where, ha="center", va="bottom",
                             fontsize=12, color="0.3", clip_on=False))  # fmt: skip
    fig.canvas.draw()  # lay out, so that each name's extent is known
    boxes = [name.get_window_extent() for name in names]
    rows = 1
    if any(a.x1 + 4 > b.x0 for a, b in pairwise(boxes)):
        rows = 2
        for name, box in zip(names[1::2], boxes[1::2]):
            name.set_y(1.01 + 1.15 * box.height / ax.get_window_extent().height)
    ax.set_title(ax.get_title(), pad=6 + rows * 12 * 1.3)


# ---------------------------------------------------------------------------------------
# The dev outputs: sst-confusion.png, sts-scatter.png, para-threshold.png


def write_dev_outputs(path: str | Path, outputs: dict[str, dict]) -> None:
    """dev-outputs.json: for each task, `ids`, `gold` labels, `prediction` (as in the
    prediction files) and `soft` (5 class probabilities, P(paraphrase), the similarity)."""
    def rounded(v):
        return [round(x, 5) for x in v] if isinstance(v, list) else round(v, 5)

    data = {task: {**o, "soft": [rounded(s) for s in o["soft"]]} for task, o in outputs.items()}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data) + "\n"))


def read_dev_outputs(path: str | Path) -> dict[str, dict]:
    return json.loads(Path(path).read_text())


def confusion_matrix(gold, predicted, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = gold class, column = predicted class."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(gold, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return counts


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the share of each gold class predicted as each class); a
    class with no examples stays a row of zeros."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def threshold_accuracy(gold, probability, thresholds) -> np.ndarray:
    """Accuracy of `probability > t` against gold 0/1 labels, for each threshold t."""
    gold = np.asarray(gold) > 0.5
    p = np.asarray(probability, dtype=np.float64)
    return np.array([((p > t) == gold).mean() for t in thresholds])


def draw_sst_confusion(sst: dict, path: str | Path) -> Path:
    counts = confusion_matrix(sst["gold"], sst["prediction"], len(SST_CLASS_NAMES))
    shares = row_normalised(counts)
    accuracy = np.trace(counts) / max(1, counts.sum())
    with styled_pyplot() as plt:
        fig, ax = plt.subplots(figsize=(7.5, 6.2), layout="constrained")
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(SST_CLASS_NAMES)):
            for j in range(len(SST_CLASS_NAMES)):
                ax.text(j, i, f"{shares[i, j]:.2f}", ha="center", va="center", fontsize=12,
                        color="white" if shares[i, j] > 0.55 else "black")  # fmt: skip
        ticks = range(len(SST_CLASS_NAMES))
        ax.set_xticks(ticks, [name.replace(" ", "\n") for name in SST_CLASS_NAMES])
        ax.set_yticks(ticks, [f"{name} ({n})" for name, n in zip(SST_CLASS_NAMES, counts.sum(axis=1))])
        ax.set(xlabel="predicted class", ylabel="gold class (number of sentences)")
        ax.set_title(f"SST-5 dev: accuracy {accuracy:.3f} on {counts.sum()} sentences\n"
                     "each row: how that gold class was predicted (sums to 1)")  # fmt: skip
        fig.colorbar(image, ax=ax, shrink=0.85, label="share of the gold class")
        return save_figure(fig, Path(path))


def draw_sts_scatter(sts: dict, path: str | Path) -> Path:
    gold, pred = np.asarray(sts["gold"], dtype=float), np.asarray(sts["prediction"], dtype=float)
    r = pearson(pred, gold)
    lo, hi = min(0.0, gold.min(), pred.min()) - 0.15, max(5.0, gold.max(), pred.max()) + 0.15
    with styled_pyplot() as plt:
        fig, ax = plt.subplots(figsize=(6.5, 6.2), layout="constrained")
        ax.plot([lo, hi], [lo, hi], color="0.4", ls="--", lw=1.2, label="y = x (a perfect prediction)")
        ax.scatter(gold, pred, s=16, alpha=0.4, color="tab:green", edgecolors="none", label="a sentence pair")
        ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", xlabel="gold similarity (0-5)",
               ylabel="predicted similarity (0-5)")  # fmt: skip
        ax.set_title(f"STS-B dev: predicted vs gold similarity\nPearson r = {r:.3f} on {len(gold)} pairs")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        return save_figure(fig, Path(path))


def draw_para_threshold(para: dict, path: str | Path) -> Path:
    thresholds = np.linspace(0, 1, 201)
    accuracy = threshold_accuracy(para["gold"], para["soft"], thresholds)
    used = float(threshold_accuracy(para["gold"], para["soft"], [0.5])[0])
    ties = np.flatnonzero(accuracy == accuracy.max())
    best = int(ties[np.argmin(np.abs(thresholds[ties] - 0.5))])  # of the best thresholds, the nearest to 0.5
    positive = float(np.mean(np.asarray(para["gold"]) > 0.5))
    with styled_pyplot() as plt:
        fig, ax = plt.subplots(figsize=(7.5, 5.2), layout="constrained")
        ax.plot(thresholds, accuracy, color="tab:orange", lw=2.2, label="dev accuracy")
        ax.axhline(max(positive, 1 - positive), color="0.5", ls=":", lw=1.5,
                   label=f"always the majority class ({max(positive, 1 - positive):.3f})")  # fmt: skip
        ax.axvline(0.5, color="0.3", ls="--", lw=1.2)
        ax.plot([0.5], [used], "o", color="black", ms=8, label=f"0.5, the threshold used: {used:.3f}")
        ax.plot([thresholds[best]], [accuracy[best]], "*", color="gold", mec="black", ms=16,
                label=f"best threshold {thresholds[best]:.3f}: {accuracy[best]:.3f}")  # fmt: skip
        ax.set(xlim=(0, 1), xlabel="threshold on P(paraphrase)", ylabel="dev accuracy")
        ax.set_title(f"Quora paraphrase dev: accuracy by decision threshold\n{len(para['gold'])} pairs, "
                     f"{positive:.0%} of them paraphrases")  # fmt: skip
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        ax.grid(alpha=0.3)
        return save_figure(fig, Path(path))


DRAW_EVALUATION = {"sst": draw_sst_confusion, "sts": draw_sts_scatter, "para": draw_para_threshold}


def draw_evaluation(outputs_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """The three dev pictures from dev-outputs.json, into out_dir (default: beside it)."""
    outputs = read_dev_outputs(outputs_path)
    out_dir = Path(out_dir) if out_dir else Path(outputs_path).parent
    return [DRAW_EVALUATION[task](outputs[task], out_dir / name) for task, name in EVALUATION_PICTURES.items()
            if task in outputs]  # fmt: skip


def plot_run(run_dir: str | Path) -> list[Path]:
    """`minbert plot RUN`: curves.png again, and the dev pictures where the run directory holds
    dev-outputs.json (written by `minbert evaluate`)."""
    run_dir = Path(run_dir)
    written = [draw_curves(run_dir)]
    if (run_dir / DEV_OUTPUTS).exists():
        written += draw_evaluation(run_dir / DEV_OUTPUTS, run_dir)
    return written
