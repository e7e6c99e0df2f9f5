"""Key conversion: each known checkpoint quirk, and loud failures on anything else."""

import pytest
import torch

from minbert.checkpoint import CheckpointError, convert_hf_state_dict, load_pretrained
from minbert.model import BertConfig, BertModel

TINY = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=16, max_position_embeddings=16)  # fmt: skip


def hf_style_state_dict() -> dict[str, torch.Tensor]:
    """bert-base-uncased's layout: `bert.` prefix, gamma/beta LayerNorms, cls.* heads, position_ids."""
    sd = {}
    for k, v in BertModel(TINY).state_dict().items():
        k = "bert." + k
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        sd[k] = v.clone()
    sd["bert.embeddings.position_ids"] = torch.arange(16)[None]
    sd["cls.predictions.bias"] = torch.zeros(50)
    sd["cls.seq_relationship.weight"] = torch.zeros(2, 8)
    return sd


def expected() -> dict[str, torch.Size]:
    return {k: v.shape for k, v in BertModel(TINY).state_dict().items()}


def test_converts_bert_base_quirks():
    sd = hf_style_state_dict()
    out = convert_hf_state_dict(sd, expected())
    assert set(out) == set(expected())
    torch.testing.assert_close(out["embeddings.LayerNorm.weight"], sd["bert.embeddings.LayerNorm.gamma"])
    model = BertModel(TINY)
    model.load_state_dict(out, strict=True)


def test_conversion_is_pure():
    sd = hf_style_state_dict()
    keys = list(sd)
    convert_hf_state_dict(sd, expected())
    assert list(sd) == keys


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd.pop("bert.encoder.layer.0.output.dense.weight"), "missing keys: encoder.layer.0.output.dense.weight"),
        (lambda sd: sd.__setitem__("bert.encoder.layer.0.extra.weight", torch.zeros(1)), "unknown keys: bert.encoder.layer.0.extra.weight"),
        (lambda sd: sd.__setitem__("bert.pooler.dense.weight", torch.zeros(8, 9)), r"pooler.dense.weight: checkpoint \(8, 9\), model \(8, 8\)"),
    ],
)
def test_fails_loudly(mutate, message):
    sd = hf_style_state_dict()
    mutate(sd)
    with pytest.raises(CheckpointError, match=message):
        convert_hf_state_dict(sd, expected())


def test_loads_pytorch_model_bin_with_prefix(tmp_path, embedded_dir):
    """A BertForPreTraining-style directory (pytorch_model.bin, bert./cls. keys) loads."""
    import shutil

    TINY_JSON = '{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, ' \
                '"intermediate_size": 16, "max_position_embeddings": 16, "model_type": "bert"}'
    (tmp_path / "config.json").write_text(TINY_JSON)
    shutil.copy(embedded_dir / "vocab.txt", tmp_path / "vocab.txt")
    sd = hf_style_state_dict()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    model = load_pretrained(tmp_path)
    torch.testing.assert_close(model.pooler.dense.weight, sd["bert.pooler.dense.weight"])


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_pretrained(tmp_path)
