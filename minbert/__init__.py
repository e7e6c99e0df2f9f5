"""minbert: a BERT encoder of our own, fine-tuned jointly on SST-5, Quora and STS-B.

Python API:
    from minbert import BertModel, Predictor, load_pretrained, load_config, resolve_config, train
    bert = load_pretrained()                       # the embedded all-MiniLM-L6-v2
    cfg = load_config(resolve_config("main"), ["train.seed=3"])   # a shipped config, by name
    scores = train(cfg, "runs/my-run")             # dev scores; files in runs/my-run
    p = Predictor.load("runs/my-run")              # ask the trained model
    p.sentiment(["the movie was a triumph"])

Names are imported when first used, so `from minbert import Predictor` loads inference and
not the training recipe (and `train` loads no serving code).
"""

from importlib import import_module

_WHERE = {
    "BertConfig": "minbert.model", "BertModel": "minbert.model", "load_pretrained": "minbert.checkpoint",
    "load_config": "minbert.config", "resolve_config": "minbert.configs", "TaskSet": "minbert.tasks.spec",
    "train": "minbert.training.recipe", "TrainOptions": "minbert.training.state", "predict_checkpoint": "minbert.runs",
    "Predictor": "minbert.inference.predictor", "Classification": "minbert.inference.predictor",
    "Binary": "minbert.inference.predictor", "Predictions": "minbert.inference.predictor",
}  # fmt: skip
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'minbert' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
