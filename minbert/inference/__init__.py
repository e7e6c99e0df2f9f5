"""Using a trained model: the Predictor (Python API), the files of `minbert predict`, and
exports (Hugging Face, sentence-transformers, ONNX)."""

from minbert.inference.predictor import Paraphrase, Predictions, Predictor, Sentiment

__all__ = ["Predictor", "Sentiment", "Paraphrase", "Predictions"]
