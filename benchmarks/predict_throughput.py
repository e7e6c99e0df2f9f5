"""Prediction throughput on the three dev sets, minbert vs a plain Hugging Face loop.

What: predictions for sst dev (1,101 sentences), quora dev (5,000 pairs) and sts dev (863 pairs),
in examples per second (an example is a sentence or a pair), tokenisation included, for
- minbert: `encode_all` (tokenise into an EncodedTask) then `minbert.evaluation.predict`
  (length-sorted batches of 128, inference mode, both sides of a pair in one forward), with
  minbert/configs/main.yaml's model section set to the reference's model (pooler output, siamese pairs,
  the seed report's heads; --as-configured keeps main.yaml's own model);
- the reference in hf_reference.py: transformers.BertModel on the same checkpoint, eval() and
  torch.no_grad(), the slow BertTokenizer on each batch of 128 in input order, one forward
  per pair side.
How: one process, same machine and threads; each side first predicts one untimed batch; then,
task by task, minbert and the reference run one after the other. Reported per task and in
total: the time with tokenisation and the model-only time (without the tokeniser calls;
batch collation stays in). Both sides get the same head weights (copied from minbert's
freshly initialised heads), so on the checkpoint their predictions must agree; the agreement is
printed as a check that both did the same work.
Run (from the repository root):
    nice -n 10 python benchmarks/predict_throughput.py [--limit N] [--batch-size 128]
        [--data-dir DIR] [--device cpu|cuda] [--random-init-base] [--only minbert|reference]
        [--as-configured]
The last line is `ratio: X`, minbert's examples/s over the reference's, tokenisation included.
"""

from __future__ import annotations

import argparse

import hf_reference
from common import TASK_ORDER, Stopwatch, add_common_args, build_minbert, describe, describe_model, load_run_config
from minbert.evaluation import predict
from minbert.runs import encode_all, read_all
from minbert.training.state import set_seed


def run_minbert(model, tokenizer, cfg, task: str, examples, batch_size: int, device: str):
    """(predictions, total seconds, model-only seconds) through minbert's own path."""
    total, model_only = Stopwatch(device), Stopwatch(device)
    with total:
        encoded = encode_all({"dev": {task: examples}}, tokenizer, cfg)["dev"][task]
        with model_only:
            preds = predict(model, task, encoded, batch_size, device=device, precision=cfg.train.precision)
    return preds, total.seconds, model_only.seconds


def run_reference(model, tokenizer, task: str, examples, batch_size: int, device: str, precision: str):
    total = Stopwatch(device)
    with total:
        preds, tok_seconds = hf_reference.predict(model, tokenizer, task, examples, batch_size, device, precision)
    return preds, total.seconds, total.seconds - tok_seconds


def agreement(task: str, a: list, b: list) -> str:
    if task == "sts":
        return f"max |difference| {max(abs(x - y) for x, y in zip(a, b)):.2e}"
    return f"{100 * sum(x == y for x, y in zip(a, b)) / len(a):.2f}% equal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--limit", type=int, default=None, help="at most N examples per dev set")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's eval_batch_size (128)")
    args = parser.parse_args()

    cfg = load_run_config(args.data_dir, args.as_configured, args.precision)
    set_seed(cfg.train.seed)
    batch_size = args.batch_size or cfg.train.eval_batch_size
    dev = {t: examples[: args.limit] for t, examples in read_all(cfg, {"dev": TASK_ORDER})["dev"].items()}

    runners = {}
    if args.only != "reference":
        model, tokenizer = build_minbert(cfg, args.random_init_base)
        model.to(args.device)
        runners["minbert"] = lambda task, ex: run_minbert(model, tokenizer, cfg, task, ex, batch_size, args.device)
    if args.only != "minbert":
        ref, ref_tokenizer = hf_reference.load_reference(cfg.model.head_dropout, args.random_init_base)
        if args.only is None and not args.as_configured:
            ref.heads.load_state_dict(model.heads.state_dict())  # same heads: predictions comparable
        ref.to(args.device)
        runners["reference"] = lambda task, ex: run_reference(ref, ref_tokenizer, task, ex, batch_size, args.device, args.precision)

    for run in runners.values():  # untimed warm-up: one batch each
        run("sst", dev["sst"][:batch_size])
    results = {name: {} for name in runners}  # name -> task -> (preds, total s, model-only s)
    for task in TASK_ORDER:
        for name, run in runners.items():
            results[name][task] = run(task, dev[task])

    print(f"device: {describe(args.device, args.precision)}; batch size {batch_size}")
    print(f"encoder: {describe_model(cfg, args.random_init_base)}")
    n = {t: len(dev[t]) for t in TASK_ORDER}
    print(f"dev examples: {n}")
    rates = {}
    for name, by_task in results.items():
        for task, (_, total, model_only) in by_task.items():
            print(f"{name:>9} {task:>4}: {total:7.2f} s total ({n[task] / total:7.2f} ex/s), "
                  f"{model_only:7.2f} s model-only ({n[task] / model_only:7.2f} ex/s)")
        total = sum(r[1] for r in by_task.values())
        model_only = sum(r[2] for r in by_task.values())
        rates[name] = (sum(n.values()) / total, sum(n.values()) / model_only)
        print(f"{name}: {sum(n.values())} examples, {total:.2f} s total = {rates[name][0]:.2f} examples/s; "
              f"model-only {model_only:.2f} s = {rates[name][1]:.2f} examples/s")
    if len(results) == 2:
        if not (args.random_init_base or args.as_configured):
            checks = ", ".join(f"{t} {agreement(t, results['minbert'][t][0], results['reference'][t][0])}"
                               for t in TASK_ORDER)  # fmt: skip
            print(f"predictions, minbert vs reference: {checks}")
        print(f"model-only ratio: {rates['minbert'][1] / rates['reference'][1]:.2f}")
        print(f"ratio: {rates['minbert'][0] / rates['reference'][0]:.2f}")


if __name__ == "__main__":
    main()
