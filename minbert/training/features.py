"""Frozen-encoder training on cached sentence vectors.

With the encoder frozen, its output for an input never changes, so each input is encoded
once and the heads train on the stored vectors: minutes instead of hours on a CPU (the seed
report's Models A and B). Vectors are stored on disk under a key made of the encoder's
weights, the pooling, and the token ids (which follow from the data file contents, the
vocabulary and max_length): a change to any of them is a new key.
Dropout that the heads apply to their input vectors still applies to cached ones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minbert.tasks.data import sorted_batches
from minbert.multitask import MultitaskBert
from minbert.tasks.encoding import EncodedTask
from minbert.run_files import atomic_write


def encoder_fingerprint(model: MultitaskBert) -> str:
    h = hashlib.sha256(model.cfg.pooling.encode())
    for name, t in model.bert.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(data: EncodedTask) -> str:
    h = hashlib.sha256()
    for side in data.sides + ([data.types] if data.types is not None else []):
        for seq in side:
            h.update(b"|" + ",".join(map(str, seq)).encode())
        h.update(b"#")
    return h.hexdigest()


@torch.inference_mode()
def encode_sides(model: MultitaskBert, data: EncodedTask, batch_size: int, device) -> torch.Tensor:
    """(sides, N, H): every sequence of `data` through the encoder once, in eval mode."""
    was_training = model.training
    model.eval()
    sides = []
    for side in range(len(data.sides)):
        out = torch.empty(len(data), model.bert.config.hidden_size)
        lengths = [len(s) for s in data.sides[side]]
        for indices in sorted_batches(lengths, batch_size):
            out[indices] = model.embed(data.side_batch(side, indices).to(device)).float().cpu()
        sides.append(out)
    model.train(was_training)
    return torch.stack(sides)


def cached_features(model: MultitaskBert, data: EncodedTask, cache_dir: Path | None, batch_size: int, device,
                    encoder_key: str | None = None) -> tuple[torch.Tensor, bool]:  # fmt: skip
    """The vectors for `data`, from the cache when present; returns (vectors, was_cached)."""
    if cache_dir is None:
        return encode_sides(model, data, batch_size, device), False
    key = hashlib.sha256(((encoder_key or encoder_fingerprint(model)) + data_fingerprint(data)).encode()).hexdigest()
    path = Path(cache_dir).expanduser() / "features" / f"{key[:32]}.safetensors"
    if path.exists():
        try:
            return load_file(str(path))["vectors"], True
        except Exception as e:  # a damaged cache entry is encoded again, never trusted
            print(f"{path}: unreadable cache entry ({type(e).__name__}); encoding again")
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = encode_sides(model, data, batch_size, device)
    atomic_write(path, lambda tmp: save_file({"vectors": vectors}, str(tmp)))
    return vectors, False


class FrozenFeatures:
    """Cached vectors of every split the run uses, served by example index: its tasks' data
    only (not the MLM phases' sentences, data["train"]["mlm"], which no frozen phase reads)."""

    def __init__(self, model: MultitaskBert, data: dict[str, dict[str, EncodedTask]], cfg, device):
        self.device = device
        key = encoder_fingerprint(model)
        cache_dir = cfg.data.cache_dir or None
        self.vectors: dict[tuple[str, str], torch.Tensor] = {}
        self.hits = 0
        for split, tasks in data.items():
            for task, encoded in tasks.items():
                if not isinstance(encoded, EncodedTask):
                    continue
                vectors, hit = cached_features(model, encoded, cache_dir, cfg.train.eval_batch_size, device, key)
                self.vectors[split, task] = vectors
                self.hits += hit

    def get(self, split: str, task: str, indices: list[int]) -> tuple[torch.Tensor, ...]:
        v = self.vectors[split, task][:, indices].to(self.device)  # (sides, B, H)
        return tuple(v.unbind(0))

    def train(self, task: str, indices: list[int]) -> tuple[torch.Tensor, ...]:
        return self.get("train", task, indices)

    def split_fn(self, split: str, task: str):
        return lambda indices: self.get(split, task, indices)
