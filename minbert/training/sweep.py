"""`minbert sweep`: a hyperparameter search on Optuna over a config's keys.

A space file maps dotted config keys to ranges or choices (`load_space`, checked before any
trial starts); each trial is an ordinary run directory `OUT/trial-NNNN` of the config with the
sampled values as overrides; its dev evaluations go to the trial (`TrainOptions.on_eval`), so a
pruner stops hopeless trials early (the run stops as on a signal: last.safetensors, logs, a note
in events.jsonl). The study lives in a database (`sqlite:///OUT/study.db` by default, any URL
Optuna takes), with heartbeats: several workers share one study, and the trial of a worker that
died is marked failed (and its parameters tried again). After every trial: OUT/trials.csv and
OUT/best.yaml (the best complete trial's whole config); at the end, the pictures.

Optuna is an optional extra (`pip install 'minbert[sweep]'`); only this module imports it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from minbert.config import ConfigError, load_config, to_dict
from minbert.run_files import RunError, atomic_write
from minbert.tasks.spec import TaskSet
from minbert.training.recipe import train
from minbert.training.state import TrainOptions

NO_OPTUNA = "optuna is not installed: pip install 'minbert[sweep]'"
SPEC_KEYS = {"low", "high", "log", "type", "step", "choices"}
PICTURES = ("history.png", "importances.png", "parallel.png")
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which worker ran a trial (trial.json, the trial's user attrs)


@dataclass(frozen=True)
class Param:
    """One searched key: `kind` "float" (uniform or `log`), "int" (with `step`) or "choice"."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple | None = None
    line: int = 0

    def distribution(self):
        import optuna

        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)


# ---------------------------------------------------------------------------------------
# The space file


def load_space(path: str | Path, config: str | Path | None, overrides: list[str] = ()) -> list[Param]:
    """The space file's parameters, each checked (`PATH:LINE: reason`, a ConfigError): a known
    config key (its bounds or choices applied to the config as overrides), a spec of the schema
    (README: `{low, high}`, `{low, high, log: true}`, `{low, high, type: int, step}`, `{choices}`),
    low < high, log only with low > 0."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: space file not found")
    loader = yaml.SafeLoader(path.read_text())
    try:
        root = loader.get_single_node()
        if root is None or not isinstance(root, yaml.MappingNode) or not root.value:
            line = root.start_mark.line + 1 if root is not None else 1
            raise ConfigError(f"{path}:{line}: a space file is a mapping of config keys to ranges or choices")
        params = [_param(path, loader, key_node, spec_node) for key_node, spec_node in root.value]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML ({e.problem or e})") from None
    finally:
        loader.dispose()
    seen: dict[str, int] = {}
    for p in params:
        if p.key in seen:
            raise ConfigError(f"{path}:{p.line}: {p.key!r} is already searched (line {seen[p.key]})")
        seen[p.key] = p.line
    for p in params:  # each bound or choice must make a valid config
        for value in p.choices if p.kind == "choice" else (p.low, p.high):
            try:
                load_config(config, [*overrides, override(p.key, value)])
            except ConfigError as e:
                raise ConfigError(f"{path}:{p.line}: {p.key}={value!r} is not a valid value: {e}") from None
    return params


def _param(path: Path, loader: yaml.SafeLoader, key_node, spec_node) -> Param:
    line = key_node.start_mark.line + 1
    key = loader.construct_object(key_node, deep=True)
    where = f"{path}:{line}"
    if not isinstance(key, str) or "." not in key:
        raise ConfigError(f"{where}: {key!r} is not a dotted config key (e.g. train.phases.1.lr)")
    if not isinstance(spec_node, yaml.MappingNode):
        raise ConfigError(f"{where}: {key}: a spec is a mapping: {{low, high}}, {{low, high, log: true}}, "
                          "{low, high, type: int} or {choices: [...]}")  # fmt: skip
    lines = {loader.construct_object(k): k.start_mark.line + 1 for k, _ in spec_node.value}
    spec = loader.construct_object(spec_node, deep=True)
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{path}:{lines[unknown[0]]}: {key}: unknown spec key {unknown[0]!r} "
                          f"(allowed: {', '.join(sorted(SPEC_KEYS))})")  # fmt: skip
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: {key}: choices go alone (no low, high, log, type, step)")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{path}:{lines['choices']}: {key}: choices must be a non-empty list")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{path}:{lines['choices']}: {key}: each choice must be a number, string, boolean or null")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{path}:{lines['choices']}: {key}: a choice is listed twice")
        return Param(key, "choice", choices=tuple(choices), line=line)
    missing = [k for k in ("low", "high") if k not in spec]
    if missing:
        raise ConfigError(f"{where}: {key}: {missing[0]!r} is missing (a range is {{low, high}}; or give choices)")
    kind = spec.get("type", "float")
    if kind not in ("float", "int"):
        raise ConfigError(f"{path}:{lines['type']}: {key}: type must be float or int, not {kind!r}")
    low, high = (_number(spec[k], kind, f"{path}:{lines[k]}: {key}: {k}") for k in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{path}:{lines['log']}: {key}: log must be true or false, not {log!r}")
    if not low < high:
        raise ConfigError(f"{path}:{lines['low']}: {key}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{path}:{lines['low']}: {key}: a log scale needs low > 0, not {low}")
    step = spec.get("step")
    if step is not None:
        if kind != "int" or isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"{path}:{lines['step']}: {key}: step goes with type: int and is an integer >= 1")
        if log and step != 1:
            raise ConfigError(f"{path}:{lines['step']}: {key}: a log scale takes no step")
    return Param(key, kind, low, high, log, step, line=line)


def _number(value: Any, kind: str, where: str) -> float | int:
    """A bound: an int for type int; a float otherwise (YAML reads 1e-5 as a string: accepted)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a number")
    if kind == "int":
        if not isinstance(value, int):
            raise ConfigError(f"{where}: {value!r} is not an integer (type: int)")
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} is not finite")
    return number


def override(key: str, value: Any) -> str:
    """`key=value` in the override grammar of load_config (strings quoted, null for None)."""
    text = "null" if value is None else json.dumps(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else repr(value)  # fmt: skip
    return f"{key}={text}"


def config_values(cfg, params: list[Param]) -> dict[str, Any]:
    """The config's own values of the searched keys (the baseline trial)."""
    tree = OmegaConf.create(to_dict(cfg))
    values = {p.key: OmegaConf.select(tree, p.key) for p in params}
    return {p.key: values[p.key] for p in params if _contains(p, values[p.key])}  # outside the space: sampled


def _contains(p: Param, value: Any) -> bool:
    if p.kind == "choice":
        return value in p.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and p.low <= value <= p.high


def objective_key(name: str, cfg) -> str:
    """A dev score's key: `overall`, a task's name (its primary metric), `task_metric`, or
    `task.metric` (the same). Refused, naming the choices, unless the run's tasks have it."""
    tasks = TaskSet.of(cfg.tasks)
    keys = ["overall"]
    aliases = {}
    for task, spec in tasks.items():
        for metric in spec.metrics:
            key = task if metric == spec.primary else f"{task}_{metric}"
            keys.append(key)
            aliases[f"{task}.{metric}"] = key
    found = aliases.get(name, name)
    if found not in keys:
        raise ConfigError(f"--objective: {name!r} is not a dev score of this config (one of: {', '.join(keys)}, "
                          f"or {', '.join(aliases)})")  # fmt: skip
    return found


# ---------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepOptions:
    """How `sweep` runs: `trials` (finished trials the study should reach: complete or pruned),
    `storage` (a database URL; None: sqlite:///OUT/study.db), `study_name` (None: OUT's name),
    `objective` (a dev score, maximised), `pruner` ("median", "none", or an optuna pruner),
    `prune_warmup` (evaluations the median pruner lets pass before judging: main.yaml's
    first, after its phrase phase, has trained SST alone, so every trial looks alike there),
    `resume` (join a study that already has finished trials), `baseline` (the config's own
    values of the space, enqueued as the first trial of a new study), `heartbeat_s` (a worker
    silent for 3 x this is dead: its trial FAIL), `sampler_seed`, `progress`."""

    trials: int = 10
    storage: str | None = None
    study_name: str | None = None
    objective: str = "overall"
    pruner: Any = "median"
    prune_warmup: int = 1
    resume: bool = False
    baseline: bool = True
    heartbeat_s: float = 30.0
    sampler_seed: int | None = None
    progress: bool = False


def open_study(out: Path, options: SweepOptions, create_ok: bool = True):
    """The study in options.storage (created if missing; every worker calls this)."""
    import optuna

    url = options.storage or f"sqlite:///{out.resolve() / 'study.db'}"
    storage = _storage(url, options.heartbeat_s)
    pruner = options.pruner
    if pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=options.prune_warmup)
    elif pruner in ("none", None):
        pruner = optuna.pruners.NopPruner()
    elif isinstance(pruner, str):
        raise ConfigError(f"--pruner: {pruner!r} is not one of median, none")
    sampler = optuna.samplers.TPESampler(seed=options.sampler_seed)
    name = options.study_name or out.resolve().name
    return optuna.create_study(storage=storage, study_name=name, direction="maximize", pruner=pruner, sampler=sampler,
                               load_if_exists=True)  # fmt: skip


def _storage(url: str, heartbeat_s: float, attempts: int = 5):
    """optuna's RDBStorage at `url`, with heartbeats. Workers that start together on a new
    database race to create its tables (one gets IntegrityError or OperationalError, "table
    already exists"): the loser tries again once the winner's tables are there."""
    import optuna
    import sqlalchemy.exc

    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    for attempt in range(attempts):  # 4.9 renamed RetryFailedTrialCallback (the old name warns)
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=max(1, round(heartbeat_s)), grace_period=max(3, round(3 * heartbeat_s)),
                heartbeat_stale_trial_callback=retry(max_retry=1),
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)  # fmt: skip
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def sweep(config: str | Path | None, space: str | Path, out: str | Path, options: SweepOptions,
          overrides: list[str] = ()) -> dict:  # fmt: skip
    """Run trials of `config` (with `overrides`) over the space file's keys until the study holds
    options.trials finished (complete or pruned) trials; each a run directory OUT/trial-NNNN.
    Returns {"best": number, "value", "params"} of the best complete trial (None when none)."""
    try:
        import optuna
    except ModuleNotFoundError:
        raise ConfigError(NO_OPTUNA) from None
    out = Path(out)
    overrides = list(overrides)
    base = load_config(config, overrides)  # bad config or overrides: before anything
    params = load_space(space, config, overrides)
    key = objective_key(options.objective, base)
    if options.trials < 1:
        raise ConfigError(f"--trials: {options.trials} must be >= 1")
    if options.prune_warmup < 0:
        raise ConfigError(f"--prune-warmup: {options.prune_warmup} must be >= 0")
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(out, options)
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial: FAIL (its parameters queued again)
    finished = _count(study, ("COMPLETE", "PRUNED"))
    if finished and not options.resume:
        raise ConfigError(f"{out}: the study {study.study_name!r} already has {finished} finished trial(s); pass "
                          "--resume to continue it (or another --out)")  # fmt: skip
    if options.baseline and not study.trials:
        study.enqueue_trial(config_values(base, params), user_attrs={"baseline": True}, skip_if_exists=True)
    remaining = options.trials - _count(study, ("COMPLETE", "PRUNED", "RUNNING"))  # a WAITING one is among them
    if remaining > 0:
        done = optuna.study.MaxTrialsCallback(options.trials, states=_states("COMPLETE", "PRUNED", "RUNNING"))
        study.optimize(lambda trial: _trial(trial, config, overrides, params, key, out, options), n_trials=remaining,
                       catch=(RunError, Surplus), callbacks=[done, lambda s, t: write_tables(s, out, params, key)])  # fmt: skip
    write_tables(study, out, params, key)
    draw_pictures(study, out)
    best = _best(study)
    return {"best": best.number, "value": best.value, "params": best.params} if best else {"best": None}


def _states(*names: str) -> tuple:
    import optuna

    return tuple(optuna.trial.TrialState[n] for n in names)


def _count(study, names: tuple[str, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=_states(*names)))


class Surplus(Exception):
    """A trial begun after the study had its trials (see `_surplus`): it ends at once, FAIL."""


def _surplus(trial, trials: int) -> bool:
    """Whether the trials numbered before this one (complete, pruned, running or waiting) are
    already `trials`. Two workers that finish at the same moment both see the study one short
    and both begin a trial (MaxTrialsCallback counts before the next trial exists): the later
    number is the surplus one."""
    earlier = trial.study.get_trials(deepcopy=False, states=_states("COMPLETE", "PRUNED", "RUNNING", "WAITING"))
    return sum(t.number < trial.number for t in earlier) >= trials


def _trial(trial, config, overrides: list[str], params: list[Param], key: str, out: Path, options: SweepOptions) -> float:
    """One trial: the sampled values as overrides, an ordinary run in OUT/trial-NNNN, each dev
    evaluation reported (the pruner may stop the run there); the objective: the final dev score.
    A surplus trial (another worker's made the study whole) stops this worker, untrained."""
    import optuna

    if _surplus(trial, options.trials):
        trial.set_user_attr("note", f"surplus: the study had its {options.trials} trials; not run")
        trial.study.stop()
        raise Surplus(f"trial {trial.number}: the study had its {options.trials} trials")

    values = {p.key: suggest(trial, p) for p in params}
    cfg = load_config(config, [*overrides, *(override(k, v) for k, v in values.items())])
    run_dir = out / f"trial-{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", WORKER)
    trial.set_user_attr("config", to_dict(cfg))
    evaluations = []

    def on_eval(record: dict) -> None:
        scores = record.get("dev") or record["probe"]
        value = scores[key]
        trial.report(value, len(evaluations))  # steps of the study: evaluation 0, 1, ... (same epochs, same step)
        evaluations.append({"kind": record["kind"], "step": record["step"], key: value})
        trial.set_user_attr("dev", record.get("dev") or {})
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at evaluation {len(evaluations) - 1} (training step {record['step']}): "
                                     f"{key} {value:.4f}")  # fmt: skip

    started = time.time()
    state = "FAIL"
    try:
        scores = train(cfg, run_dir, TrainOptions(overwrite=True, progress=options.progress, on_eval=on_eval))
        trial.set_user_attr("dev", {k: v for k, v in scores.items() if k != "train_wall_s"})
        state = "COMPLETE"
        return scores[key]
    except optuna.TrialPruned:
        state = "PRUNED"
        raise
    finally:
        wall = round(time.time() - started, 1)
        trial.set_user_attr("wall_s", wall)
        note = {"trial": trial.number, "study": trial.study.study_name, "worker": WORKER, "state": state,
                "params": values, "evaluations": evaluations, "wall_s": wall}  # fmt: skip
        if run_dir.is_dir():
            text = json.dumps(note, indent=2) + "\n"
            atomic_write(run_dir / "trial.json", lambda tmp: tmp.write_text(text))


def suggest(trial, p: Param):
    """The trial's value of `p` through Optuna's public suggest_* (the distribution it stores is
    `p.distribution()`)."""
    if p.kind == "choice":
        return trial.suggest_categorical(p.key, p.choices)
    if p.kind == "int":
        return trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, log=p.log)


def _best(study):
    complete = study.get_trials(deepcopy=False, states=_states("COMPLETE"))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


# ---------------------------------------------------------------------------------------
# What a sweep leaves: trials.csv, best.yaml, pictures


def write_tables(study, out: Path, params: list[Param], key: str) -> None:
    """OUT/trials.csv (every trial: number, state, objective, parameters, dev scores, wall time,
    run directory) and OUT/best.yaml (the best complete trial's whole config), atomically."""
    trials = study.get_trials(deepcopy=False)
    metrics = sorted({m for t in trials for m in t.user_attrs.get("dev", {})})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", key, *(p.key for p in params), *(f"dev_{m}" for m in metrics), "wall_s",
                     "baseline", "run_dir", "note"])  # fmt: skip
    for t in trials:
        dev = t.user_attrs.get("dev", {})
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                         *(t.params.get(p.key, "") for p in params), *(dev.get(m, "") for m in metrics),
                         t.user_attrs.get("wall_s", ""), bool(t.user_attrs.get("baseline")),
                         t.user_attrs.get("run_dir", ""), t.user_attrs.get("note", "")])  # fmt: skip
    text = buf.getvalue()
    atomic_write(out / "trials.csv", lambda tmp: tmp.write_text(text))
    best = _best(study)
    if best is not None:
        head = (f"# minbert sweep {study.study_name}: trial {best.number}, dev {key} {best.value:.4f}\n"
                f"# {', '.join(override(k, v) for k, v in best.params.items())}\n")  # fmt: skip
        body = yaml.safe_dump(best.user_attrs["config"], sort_keys=False)
        atomic_write(out / "best.yaml", lambda tmp: tmp.write_text(head + body))


def parallel_coordinates(study, plt):
    """One vertical axis per searched key (its range as searched: log keys on a log scale,
    choices evenly spaced), one line per trial across them: complete trials coloured by their
    score, the best drawn last and thick, pruned ones grey and dashed. Optuna's own plot labels
    every axis with a crowd of ticks and hides the best line at the top edge; this one writes
    each axis's low and high only, and the keys under them ("train.phases." written "phase ").
    Returns the axes."""
    import matplotlib as mpl

    trials = [t for t in study.get_trials(deepcopy=False, states=_states("COMPLETE", "PRUNED")) if t.params]
    dists = {}
    for t in trials:
        dists.update(t.distributions)
    keys = sorted(dists)

    def place(key, value) -> float:  # 0 (low) .. 1 (high) on the key's axis
        d = dists[key]
        if hasattr(d, "choices"):
            return d.choices.index(value) / max(1, len(d.choices) - 1)
        low, high, v = (math.log(x) if d.log else x for x in (d.low, d.high, value))
        return (v - low) / (high - low) if high > low else 0.5

    def ends(key) -> tuple[str, str]:
        d = dists[key]
        if hasattr(d, "choices"):
            return str(d.choices[0]), str(d.choices[-1])
        return f"{d.low:.3g}", f"{d.high:.3g}"

    complete = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    xs = list(range(len(keys)))
    for t in pruned:
        ax.plot(xs, [place(k, t.params[k]) for k in keys], color="0.6", ls="--", lw=1, alpha=0.8)
    values = [t.value for t in complete]
    norm = mpl.colors.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-9)
    cmap = mpl.colormaps["viridis"]
    for i, t in enumerate(complete):
        best = i == len(complete) - 1
        ax.plot(xs, [place(k, t.params[k]) for k in keys], color=cmap(norm(t.value)), lw=3 if best else 1.5,
                marker="o", ms=4, zorder=3 if best else 2, label=f"best: trial {t.number}, {t.value:.4f}" if best else None)  # fmt: skip
    for x, k in enumerate(keys):
        ax.axvline(x, color="0.3", lw=0.8, zorder=1)
        low, high = ends(k)
        ax.text(x, -0.04, low, ha="center", va="top", fontsize=8)
        ax.text(x, 1.04, high, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [k.replace("train.phases.", "phase ") for k in keys], rotation=15, fontsize=8)
    ax.tick_params(axis="x", pad=16)
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.12)
    ax.set_xlim(-0.4, len(keys) - 0.6)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if pruned:
        ax.plot([], [], color="0.6", ls="--", label=f"pruned ({len(pruned)})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="dev score (the objective)")
    ax.set_title(f"{len(complete)} complete trials: each axis the searched range (log keys on a log scale)", fontsize=10)
    return ax


def draw_pictures(study, out: Path) -> list[str]:
    """OUT/history.png, importances.png (Optuna's matplotlib plots), parallel.png
    (`parallel_coordinates`); a picture that
    cannot be drawn (too few complete trials, one parameter) is said in one line instead."""
    import warnings

    from minbert.reports.plots import draw_or_explain

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as views
    except ImportError as e:
        print(f"minbert sweep: no pictures ({e.name} is not installed: pip install 'minbert[plots]')")
        return []
    complete = _count(study, ("COMPLETE",))
    n_params = len({k for t in study.get_trials(deepcopy=False) for k in t.params})
    plots = {"history.png": (views.plot_optimization_history, complete >= 1),
             "importances.png": (views.plot_param_importances, complete >= 3 and n_params >= 2),
             "parallel.png": (lambda study: parallel_coordinates(study, plt), complete >= 2)}  # fmt: skip
    written = []
    for name, (plot, enough) in plots.items():
        if not enough:
            print(f"minbert sweep: {name} not drawn ({complete} complete trial(s), {n_params} parameter(s))")
            continue

        def draw(plot=plot, name=name):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" notices
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)

        draw_or_explain(str(out / name), draw)
        if (out / name).exists():
            written.append(str(out / name))
    return written
