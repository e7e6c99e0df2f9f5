"""minbert: a BERT encoder of our own, fine-tuned jointly on SST-5, Quora and STS-B.

Python API:
    from minbert import BertModel, load_pretrained, load_config, train
    bert = load_pretrained()                       # the embedded all-MiniLM-L6-v2
    cfg = load_config("configs/main.yaml", ["train.seed=3"])
    scores = train(cfg, "runs/my-run")             # dev scores; files in runs/my-run
"""

from minbert.checkpoint import load_pretrained
from minbert.config import load_config
from minbert.model import BertConfig, BertModel
from minbert.train import predict_checkpoint, train

__all__ = ["BertConfig", "BertModel", "load_pretrained", "load_config", "train", "predict_checkpoint"]
