"""`minbert train | evaluate | predict | predict-files | ensemble | export | serve | reproduce | sweep | plot`.

Config overrides are dotted keys after the named options: `minbert train --train.seed=3
--train.phases.0.epochs=2`. `--model PATH` is short for `--model.checkpoint=PATH`.

One small function per command (`COMMANDS`): each validates its arguments, imports what it
uses, calls the library and prints. `main` parses, turns the known errors into one line and
an exit status (2: bad input or files, 1: a run that could not go on), and nothing imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from minbert.configs import resolve_config
from minbert.evaluation import PREDICTION_LAYOUTS
from minbert.inference.backends import BACKENDS
from minbert.inference.export import FORMATS
from minbert.inference.io import OUTPUT_FORMATS
from minbert.inference.serve_limits import Limits


def _overrides(unknown: list[str], model: str | None, parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for item in unknown:
        key = item.split("=", 1)[0]
        if not item.startswith("--") or "=" not in item or ("." not in key and key != "--tasks"):
            parser.error(f"unrecognised argument {item!r} (config overrides look like --train.seed=3)")
        out.append(item[2:])
    if model:
        out.append(f"model.checkpoint={model}")
    return out


def _add_serve_parser(sub) -> argparse.ArgumentParser:
    """`minbert serve`'s options: where it listens, the backend, micro-batching and request limits."""
    p_serve = sub.add_parser("serve", help="a JSON API and a web page for a trained model (FastAPI + uvicorn)")
    p_serve.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default: 127.0.0.1, this machine only; any address that is not "
                         "loopback needs an API key, or --no-auth)")
    p_serve.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    p_serve.add_argument("--backend", choices=BACKENDS, default="torch",
                         help="onnx: an export's ONNX graphs; int8: int8 ONNX graphs (an export's, or made "
                        "at start), on the CPU")
    limits = Limits()
    p_serve.add_argument("--max-batch", type=int, default=limits.max_batch, help="inputs gathered from concurrent "
                         f"requests into one forward (default: {limits.max_batch}; 1: one request per forward)")
    p_serve.add_argument("--batch-wait-ms", type=float, default=limits.batch_wait_ms, help="how long a request waits "
                         f"for others to share its forward (default: {limits.batch_wait_ms:g})")
    p_serve.add_argument("--no-batching", action="store_true", help="one request per forward (--max-batch 1 "
                         "--batch-wait-ms 0)")
    p_serve.add_argument("--max-texts", type=int, default=limits.max_texts,
                         help=f"texts or pairs in one request (default: {limits.max_texts})")
    p_serve.add_argument("--max-chars", type=int, default=limits.max_chars,
                         help=f"characters in one text (default: {limits.max_chars})")
    p_serve.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes,
                         help=f"bytes in a request body (default: {limits.max_body_bytes})")  # fmt: skip
    from minbert.inference.serve_limits import API_KEY_ENV, MIN_KEY_CHARS

    p_serve.add_argument("--api-key", metavar="KEY", help=f"every route but / and /health wants Authorization: "
                         f"Bearer KEY (at least {MIN_KEY_CHARS} characters). Better: the {API_KEY_ENV} environment "
                         "variable, since a flag is visible to every user of the machine in `ps`; the flag wins")
    p_serve.add_argument("--no-auth", action="store_true", help="serve a --host that is not loopback without an API "
                         "key, on purpose (refused otherwise)")
    p_serve.add_argument("--max-concurrent", type=int, metavar="N", default=limits.max_concurrent, help="requests in flight at "
                         f"once; one more gets a 503 (default: {limits.max_concurrent})")
    p_serve.add_argument("--header-timeout-s", type=float, metavar="S", default=limits.header_timeout_s, help="seconds a client "
                         "has for a request's line and headers before it is disconnected (default: "
                         f"{limits.header_timeout_s:g})")
    p_serve.add_argument("--body-timeout-s", type=float, metavar="S", default=limits.body_timeout_s, help="seconds a client has "
                         f"for a request's body after its headers; then a 408 (default: {limits.body_timeout_s:g})")
    p_serve.add_argument("--keep-alive-s", type=float, metavar="S", default=limits.keep_alive_s, help="an idle connection is "
                         f"closed after this many seconds (default: {limits.keep_alive_s:g})")  # fmt: skip
    return p_serve


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's subparser by name (for its own errors)."""
    parser = argparse.ArgumentParser(prog="minbert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train (no config: the main job)")
    p_train.add_argument("--config", help="YAML file or name in configs/ (default: main, the main job)")
    p_train.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    p_train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p_train.add_argument("--init-from", help="a finished run whose phases this config continues (e.g. Model E after D)")
    p_train.add_argument("--overwrite", action="store_true", help="start again in an --out that already holds a run")
    p_eval = sub.add_parser("evaluate", help="dev scores of a saved checkpoint, and pictures of its dev outputs")
    p_eval.add_argument("--plots", help="where dev-outputs.json and the dev pictures go (default: the run directory)")
    p_eval.add_argument("--backend", choices=("torch", "int8"), default="torch",
                        help="int8: the model's int8 ONNX graphs in onnxruntime, on the CPU")
    p_pred = sub.add_parser("predict", help="ask a trained model: sentiment of texts, paraphrase or similarity")
    p_pred.add_argument("--task", required=True, help="sst, para, sts, or a task the run declared")
    p_pred.add_argument("texts", nargs="*", help="texts (sst), or the two sides of each pair in turn (para, sts)")
    p_pred.add_argument("--input", help="a CSV, TSV or JSONL file (`sentence`, or `sentence1,sentence2`); - for stdin")
    p_pred.add_argument("--columns", help="the text column(s) of --input, comma-separated, where named otherwise")
    p_pred.add_argument("--output", help="the predictions of --input, written atomically (default: stdout)")
    p_pred.add_argument("--format", choices=OUTPUT_FORMATS, help="of --output (default: from its extension, else csv)")
    p_pred.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="onnx: an export's ONNX graphs; int8: int8 ONNX graphs (an export's, or made "
                        "at start), on the CPU")
    p_pred.add_argument("--batch-size", type=int, help="default: the run's eval_batch_size")
    p_files = sub.add_parser("predict-files", help="write the six dataset prediction files (dev and test)")
    p_files.add_argument("--out", required=True)
    p_files.add_argument("--format", choices=PREDICTION_LAYOUTS, default="csv",
                         help="csv: id,prediction; cs224n: the course leaderboard's layout (its starter code's)")
    p_ens = sub.add_parser("ensemble", help="average several runs' predictions: the six prediction files, dev "
                           "scores, and a directory Predictor.load and --checkpoint take")
    p_ens.add_argument("runs", nargs="+", metavar="RUN", help="run directories (their best.safetensors) or checkpoint files")
    p_ens.add_argument("--out", required=True)
    p_ens.add_argument("--soft-labels", metavar="TASK,...", help="also the ensemble's soft predictions on these tasks' "
                       "training split, for distillation (train-soft-TASK.jsonl)")
    p_ens.add_argument("--no-test", action="store_true", help="the dev split only")
    p_exp = sub.add_parser("export", help="the model as a Hugging Face BERT directory or ONNX graphs")
    p_exp.add_argument("--out", required=True)
    p_exp.add_argument("--format", choices=FORMATS, default="hf",
                       help="hf: a Hugging Face BERT directory with its model card (README.md); onnx: ONNX graphs")
    p_exp.add_argument("--check-limit", type=int, help="onnx: check on at most N dev examples per task (default: all)")
    p_exp.add_argument("--no-check", action="store_true", help="onnx: do not check the graphs against PyTorch")
    p_serve = _add_serve_parser(sub)
    for p in (p_eval, p_pred, p_serve):
        p.add_argument("--threads", type=int, help="threads for the forwards (default: the cores this process may use)")
    for p in (p_eval, p_pred, p_files, p_serve):
        p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="the torch backend's: "
                       "auto (default): bf16 autocast where the CPU (AMX, AVX512-BF16) or GPU has native bf16, else "
                       "fp32")  # fmt: skip
    for p in (p_eval, p_pred, p_files, p_exp, p_serve):
        p.add_argument("--checkpoint", required=True,
                       help="a run directory (its best.safetensors) or a .safetensors checkpoint written by minbert "
                            "train" + (" (or an export or ensemble directory)" if p in (p_pred, p_serve) else ""))  # fmt: skip
    p_rep = sub.add_parser("reproduce", help="the seed report's Models A-F, with a table and a chart")
    p_rep.add_argument("--out", required=True)
    p_rep.add_argument("--models", default="A,B,C,D,E,F")
    p_sweep = sub.add_parser("sweep", help="a hyperparameter search on Optuna: trials of a config over a space file's "
                             "keys, each a run directory (the sweep extra)")  # fmt: skip
    p_sweep.add_argument("--config", help="YAML file or name in configs/ (default: main)")
    p_sweep.add_argument("--space", required=True, help="YAML: dotted config key -> {low, high[, log: true][, type: "
                         "int, step]} or {choices: [...]} (README)")  # fmt: skip
    p_sweep.add_argument("--trials", type=int, required=True, help="finished (complete or pruned) trials the study "
                         "should reach, over all its workers")  # fmt: skip
    p_sweep.add_argument("--out", required=True, help="the sweep's directory: trial-NNNN/, trials.csv, best.yaml, pictures")
    p_sweep.add_argument("--storage", help="the study's database URL (default: sqlite:///OUT/study.db); workers on "
                         "several machines share e.g. postgresql://...")  # fmt: skip
    p_sweep.add_argument("--study-name", help="(default: the name of --out)")
    p_sweep.add_argument("--objective", default="overall", help="the dev score maximised: overall, a task (its "
                         "primary metric) or task.metric (default: overall)")  # fmt: skip
    p_sweep.add_argument("--pruner", choices=("median", "none"), default="median",
                         help="median: stop a trial whose dev score is below the median of earlier trials' at the "
                         "same evaluation (after 2 finished trials; default)")  # fmt: skip
    p_sweep.add_argument("--prune-warmup", type=int, default=1, help="the median pruner judges no trial at its first "
                         "N dev evaluations (default: 1; main.yaml's first one follows phrases, SST alone trained)")  # fmt: skip
    p_sweep.add_argument("--resume", action="store_true", help="continue (or join) a study that has finished trials")
    p_sweep.add_argument("--no-baseline", action="store_true", help="do not run the config's own values as the "
                         "first trial of a new study")  # fmt: skip
    p_sweep.add_argument("--heartbeat-s", type=float, default=30.0, help="a worker's heartbeat; one silent for 3 x "
                         "this is dead, its trial marked failed and tried again (default: 30)")  # fmt: skip
    p_sweep.add_argument("--seed", type=int, help="the sampler's seed (default: random)")
    p_plot = sub.add_parser("plot", help="draw a run's pictures again: curves.png, and the dev pictures if evaluated")
    p_plot.add_argument("run", help="a run directory")
    for p in (p_train, p_eval, p_pred, p_files, p_ens, p_exp, p_serve, p_rep, p_sweep):
        p.add_argument("--model", help="BERT checkpoint directory (default: the embedded all-MiniLM-L6-v2)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser, {"train": p_train, "evaluate": p_eval, "predict": p_pred, "predict-files": p_files,
                    "ensemble": p_ens, "export": p_exp, "serve": p_serve, "reproduce": p_rep, "sweep": p_sweep, "plot": p_plot}  # fmt: skip


# ---------------------------------------------------------------------------------------
# The commands: (args, config overrides, the command's parser) -> exit status


def train_command(args, overrides: list[str], parser) -> int:
    """Exit status 0 when the run finished; after SIGTERM or SIGINT, 128 + the signal's number
    (143, 130: as a shell reports a process the signal ended), last.safetensors at the step the
    run stopped after, and one line saying how to go on."""
    from minbert.config import load_config
    from minbert.training import TrainingStopped, TrainOptions, train

    config_path = resolve_config(args.config)
    cfg = load_config(config_path, overrides)
    out = Path(args.out or f"runs/{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"minbert: training {config_path} -> {out}", flush=True)
    options = TrainOptions(resume=args.resume, init_from=args.init_from, overwrite=args.overwrite,
                           progress=not args.no_progress)  # fmt: skip
    try:
        scores = train(cfg, out, options)
    except TrainingStopped as stop:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            print(f"minbert: {stop}; continue with: {resume_command(args, overrides, config_path, out)}", file=sys.stderr)
        return stop.exit_status
    print_scores(scores)
    print(f"run directory: {out}")
    return 0


def resume_command(args, overrides: list[str], config_path: Path, out: Path) -> str:
    """The `minbert train` line that continues this run: its config, overrides and --init-from
    (under torchrun, the same number of processes a node)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', world)}", "-m", "minbert.cli"]
    words = [*(launcher if world > 1 else ["minbert"]), "train", "--config", str(config_path), "--out", str(out), "--resume"]
    words += ["--init-from", str(args.init_from)] if args.init_from else []
    words += [f"--{o}" for o in overrides] + (["--no-progress"] if args.no_progress else [])
    return shlex.join(words)


def evaluate_command(args, overrides: list[str], parser) -> int:
    from minbert.inference.evaluate import evaluate_checkpoint

    print_scores(evaluate_checkpoint(args.checkpoint, overrides, args.plots, backend=args.backend,
                                     precision=args.precision))  # fmt: skip
    return 0


def predict_files_command(args, overrides: list[str], parser) -> int:
    from minbert.runs import predict_checkpoint

    out = Path(args.out)
    print_scores(predict_checkpoint(args.checkpoint, overrides, out, layout=args.format, precision=args.precision))
    print(f"prediction files ({args.format}) written to {out}")
    return 0


def ensemble_command(args, overrides: list[str], parser) -> int:
    from minbert.inference.ensemble import predict_ensemble

    soft = args.soft_labels.split(",") if args.soft_labels else []
    print_scores(predict_ensemble(args.runs, args.out, overrides, soft, test=not args.no_test,
                                  progress=not args.no_progress))  # fmt: skip
    print(f"ensemble of {len(args.runs)} run(s) written to {args.out} (each input: {len(args.runs)} forward passes)")
    return 0


def predict_command(args, overrides: list[str], parser) -> int:
    from minbert.inference import io
    from minbert.inference.predictor import Predictor

    if bool(args.texts) == bool(args.input):
        parser.error("give either texts or --input FILE")
    if not args.input and (args.output or args.columns or args.format):
        parser.error("--output, --columns and --format go with --input")
    predictor = Predictor.load(args.checkpoint, args.backend, batch_size=args.batch_size, overrides=overrides,
                               precision=args.precision)  # fmt: skip
    if args.input:
        columns = args.columns.split(",") if args.columns else None
        summary = io.predict_file(predictor, args.task, args.input, columns, args.output, args.format,
                                  progress=not args.no_progress)  # fmt: skip
        print(f"minbert: {summary}", file=sys.stderr)
    else:
        print(io.answer_texts(predictor, args.task, args.texts))
    return 0


def export_command(args, overrides: list[str], parser) -> int:
    from minbert.inference.export import export_checkpoint

    report = export_checkpoint(args.checkpoint, args.out, args.format, overrides, args.check_limit,
                               check=not args.no_check)  # fmt: skip
    if report:
        print(f"ONNX vs PyTorch on the dev files: {json.dumps(report)}")
    print(f"exported ({args.format}) to {args.out}")
    return 0


def serve_command(args, overrides: list[str], parser) -> int:
    import os

    import torch

    from minbert.inference.serve_limits import API_KEY_ENV, Access

    try:
        from minbert.inference.serve import serve
    except ModuleNotFoundError as e:
        parser.error(f"{e.name} is not installed: pip install 'minbert[serve]' (FastAPI and uvicorn)")
    max_batch, wait_ms = (1, 0.0) if args.no_batching else (args.max_batch, args.batch_wait_ms)
    limits = Limits(max_batch=max_batch, batch_wait_ms=wait_ms, max_texts=args.max_texts,
                    max_chars=args.max_chars, max_body_bytes=args.max_body_bytes, max_concurrent=args.max_concurrent,
                    header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
                    keep_alive_s=args.keep_alive_s)  # fmt: skip
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    access = Access(args.host, args.port, key, args.no_auth)  # a ValueError: one line, exit 2
    if args.api_key is not None:
        print(f"minbert: warning: --api-key shows the key to every user of this machine in `ps`; {API_KEY_ENV} "
              "does not", file=sys.stderr)  # fmt: skip
    if access.exposed_without_key:
        print(f"minbert: warning: serving {args.host}:{args.port} without an API key (--no-auth): anyone who can "
              "reach it can use the model", file=sys.stderr)  # fmt: skip
    serve(args.checkpoint, access, limits, args.backend, overrides, torch.get_num_threads(), args.precision)
    return 0


def reproduce_command(args, overrides: list[str], parser) -> int:
    from minbert.training import TrainingStopped
    from minbert.training.reproduce import reproduce

    try:
        reproduce(Path(args.out), args.models.split(","), overrides, progress=not args.no_progress)
    except TrainingStopped as stop:  # each model's run resumes where it stopped
        print(f"minbert: {stop}; the same command goes on from there", file=sys.stderr)
        return stop.exit_status
    return 0


def sweep_command(args, overrides: list[str], parser) -> int:
    from minbert.training.sweep import SweepOptions, sweep  # without optuna, sweep() says so (ConfigError: exit 2)

    options = SweepOptions(trials=args.trials, storage=args.storage, study_name=args.study_name,
                           objective=args.objective, pruner=args.pruner, resume=args.resume,
                           baseline=not args.no_baseline, heartbeat_s=args.heartbeat_s, sampler_seed=args.seed,
                           progress=not args.no_progress, prune_warmup=args.prune_warmup)  # fmt: skip
    config_path = resolve_config(args.config)
    print(f"minbert: sweep of {config_path} over {args.space} -> {args.out}", flush=True)
    best = sweep(config_path, args.space, args.out, options, overrides)
    if best["best"] is None:
        print("no complete trial")
    else:
        print(f"best: trial {best['best']}, dev {args.objective} {best['value']:.4f}, {json.dumps(best['params'])}")
    print(f"sweep directory: {args.out} (trials.csv, best.yaml)")
    return 0


def plot_command(args, overrides: list[str], parser) -> int:
    from minbert.reports.plots import NO_MATPLOTLIB, plot_run

    try:
        written = plot_run(Path(args.run))
    except FileNotFoundError as e:
        print(f"minbert: error: {e}", file=sys.stderr)
        return 2
    except ImportError:
        print(f"minbert: error: {NO_MATPLOTLIB}", file=sys.stderr)
        return 1
    print("\n".join(str(path) for path in written))
    return 0


COMMANDS = {"train": train_command, "evaluate": evaluate_command, "predict": predict_command,
            "predict-files": predict_files_command, "ensemble": ensemble_command, "export": export_command,
            "serve": serve_command, "reproduce": reproduce_command, "sweep": sweep_command,
            "plot": plot_command}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    active = commands[args.command]
    if args.command == "plot":
        if unknown:
            active.error(f"unrecognised arguments: {' '.join(unknown)}")
        return plot_command(args, [], active)
    overrides = _overrides(unknown, args.model, active)

    import torch

    from minbert.checkpoint import CheckpointError
    from minbert.config import ConfigError
    from minbert.run_files import RunError
    from minbert.tasks.data import DataError

    if hasattr(args, "threads"):  # the commands that predict: every core this process may use, by default
        from minbert.inference.backends import allowed_cores

        torch.set_num_threads(args.threads or allowed_cores())
    try:
        return COMMANDS[args.command](args, overrides, active)
    except (ConfigError, DataError, CheckpointError, OSError, ValueError) as e:  # one line, no traceback
        print(f"minbert: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:  # diverged, directory locked, a file that could not be written
        print(f"minbert: error: {e}", file=sys.stderr)
        return 1


def print_scores(scores: dict) -> None:
    """Dev scores, one a line (the seed tasks by their long names), then the same as JSON."""
    names = {"sst": "SST accuracy", "para": "Paraphrase accuracy", "sts": "STS Pearson r", "overall": "Overall"}
    print("dev scores")
    for key, value in scores.items():
        if key != "train_wall_s":
            print(f"  {names.get(key, key):<22}{value:.4f}")
    print(json.dumps(scores))


if __name__ == "__main__":
    raise SystemExit(main())
