"""Training: the recipe (`train`), the state a run carries and how it starts or resumes, the
loop of phases, epochs and steps, probes, logs, samplers, MLM, frozen-feature caching, run state
(lock, timer, RNG), and the seed report's Models A-F (`reproduce`)."""

from minbert.training.recipe import train
from minbert.training.state import TrainOptions
from minbert.training.stopping import TrainingStopped

__all__ = ["train", "TrainOptions", "TrainingStopped"]
