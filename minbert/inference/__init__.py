"""Using a trained model: its backends (torch, onnx, int8), the Predictor (Python API), ensembles,
exports (Hugging Face, sentence-transformers, ONNX), the files of `minbert predict`, the dev
report of `minbert evaluate`, and `minbert serve`."""
