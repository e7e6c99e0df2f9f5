"""minbert: a BERT encoder of our own, fine-tuned jointly on SST-5, Quora and STS-B.

Python API:
    from minbert import BertModel, Predictor, load_pretrained, load_config, resolve_config, train
    bert = load_pretrained()                       # the embedded all-MiniLM-L6-v2
    cfg = load_config(resolve_config("main"), ["train.seed=3"])   # a shipped config, by name
    scores = train(cfg, "runs/my-run")             # dev scores; files in runs/my-run
    p = Predictor.load("runs/my-run")              # ask the trained model
    p.sentiment(["the movie was a triumph"])
"""

from minbert.checkpoint import load_pretrained
from minbert.config import load_config
from minbert.configs import resolve_config
from minbert.inference import Paraphrase, Predictor, Sentiment
from minbert.model import BertConfig, BertModel
from minbert.train import predict_checkpoint, train

__all__ = ["BertConfig", "BertModel", "load_pretrained", "load_config", "resolve_config", "train", "predict_checkpoint",
           "Predictor", "Sentiment", "Paraphrase"]
