"""The BERT encoder (Devlin et al. 2019), written top to bottom like the paper.

Embeddings -> N x [self-attention -> add & LayerNorm -> feed-forward -> add & LayerNorm]
-> pooler. Post-LN residuals as in the original Transformer/BERT. Parameter names are the
Hugging Face checkpoint keys (`embeddings.word_embeddings.weight`,
`encoder.layer.0.attention.self.query.weight`, ...) so that loading a checkpoint is a
strict `load_state_dict`; `nn.ModuleDict` supplies the names where a class would only
exist to carry one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import get_type_hints

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


@dataclass
class BertConfig:
    """BERT hyper-parameters; field names are those of a checkpoint's config.json.

    Defaults are bert-base-uncased.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act != "gelu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (BERT uses exact 'gelu')")

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Read config.json, keeping the BERT fields and ignoring the rest (architectures, ...).
        Every problem (bad JSON, not an object, a value of the wrong type) is a ValueError naming the file."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start + 1})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object of BERT settings, got a JSON {type(raw).__name__}")
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{path}: model_type is {model_type!r}, not 'bert'")
        types = get_type_hints(cls)
        kinds = {int: "an integer", float: "a number", str: "a string"}
        kwargs = {k: v for k, v in raw.items() if k in types and v is not None}  # null: the default
        for k, v in kwargs.items():
            want = (int, float) if types[k] is float else types[k]  # JSON may write 0.0 as 0
            if isinstance(v, bool) or not isinstance(v, want):
                raise ValueError(f"{path}: {k} must be {kinds[types[k]]}, got {v!r}")
            low = 0 if k == "pad_token_id" else 1  # an id may be 0; sizes and counts may not
            if types[k] is int and v < low:
                raise ValueError(f"{path}: {k} must be >= {low}, got {v!r}")
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout (Srivastava et al. 2014): in training, each element is zeroed with probability p
    and the others scaled by 1 / (1 - p). On the CPU the keep-mask comes from 16-bit random
    numbers, four from each 64-bit draw of torch's generator, where `F.dropout` makes one draw
    per element: the same distribution with p rounded to a multiple of 2^-16, about 3x faster
    (drawing masks took 12% of a CPU training step). Elsewhere it is `F.dropout`."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    bits = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-2^15, 2^15)
    keep = bits >= round(p * 2**16) - 2**15
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """`dropout` as a module (no parameters: checkpoint keys are unchanged)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout (BERT sec. 3)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Positions count from each row's start, or (packed rows) from each sequence's: position_ids.
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device) if position_ids is None else position_ids  # (T,) or (B, T)
        x = (
            self.word_embeddings(input_ids)  # (B, T, H)
            + self.position_embeddings(positions)  # (T, H) broadcast over B, or (B, T, H)
            + self.token_type_embeddings(token_type_ids)  # (B, T, H)
        )
        return self.dropout(self.LayerNorm(x))


def writes_out_attention(training: bool, dropout_p: float, device: torch.device) -> bool:
    """Whether SelfAttention computes softmax(QK^T / sqrt(d) + mask) V itself instead of
    calling SDPA: in ONNX export, and in CPU training with attention dropout."""
    return torch.onnx.is_in_onnx_export() or (training and dropout_p > 0 and device.type == "cpu")


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean attention mask (True: may attend) as the scores' addend: 0 or -inf."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, -math.inf)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention through torch's SDPA (fused kernels where available)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, T, d)

        q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
        # attn_mask: (B, 1, 1, T) or, packed rows, (B, 1, T, T); boolean (True where a key may be
        # attended to) or additive.
        if writes_out_attention(self.training, self.dropout_p, x.device):
            # Written out for export (SDPA's exported form ran slower in onnxruntime, int8 above
            # all: docs/RESULTS.md), and for CPU training, where SDPA with dropout computes the
            # same with a slower dropout mask (see `dropout`). The mask is additive here (made
            # so once per forward by BertModel): adding it has no backward, where masking a
            # boolean would cost a masked copy of the scores and of their gradient per layer.
            scores = (q @ k.transpose(-2, -1)).div_(math.sqrt(self.head_dim))  # (B, heads, T, T)
            if attn_mask is not None:  # a boolean mask here only where a caller skipped BertModel
                scores = scores.add_(attn_mask if attn_mask.is_floating_point() else additive_mask(attn_mask))
            y = dropout(scores.softmax(dim=-1), self.dropout_p, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.dropout_p if self.training else 0.0
            )  # (B, heads, T, d)
        return y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)


class Layer(nn.Module):
    """One Transformer encoder block with post-LN residuals:
    x = LN(x + Dropout(W_o Attn(x)));  x = LN(x + Dropout(W_2 GELU(W_1 x))).
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        H, eps = config.hidden_size, config.layer_norm_eps
        self.attention = nn.ModuleDict(
            {
                "self": SelfAttention(config),
                "output": nn.ModuleDict({"dense": nn.Linear(H, H), "LayerNorm": nn.LayerNorm(H, eps=eps)}),
            }
        )
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(H, config.intermediate_size)})
        self.output = nn.ModuleDict(
            {"dense": nn.Linear(config.intermediate_size, H), "LayerNorm": nn.LayerNorm(H, eps=eps)}
        )
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        attn, out = self.attention["output"], self.output
        a = self.attention["self"](x, attn_mask)  # (B, T, H)
        x = attn["LayerNorm"](x + self.dropout(attn["dense"](a)))
        h = F.gelu(self.intermediate["dense"](x))  # exact erf GELU, (B, T, 4H)
        x = out["LayerNorm"](x + self.dropout(out["dense"](h)))
        return x


class Encoder(nn.Module):
    """The N layers, one after another.

    `gradient_checkpointing` (activation checkpointing, Chen et al. 2016): in training with
    gradients on, a layer keeps only its input; the backward pass runs its forward again to
    get the rest. Memory for activations falls from N layers' worth to about one layer's
    worth plus N layer inputs, for one more forward per step. The generator's state is saved
    and restored around the recompute, so it draws the same dropout masks and the gradients
    are those without it. Off in evaluation and under no_grad (prediction, export): nothing
    to keep there.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False  # an attribute, not a BertConfig field: checkpoints keep their keys

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layer:
            if recompute:
                x = torch.utils.checkpoint.checkpoint(layer, x, attn_mask, use_reentrant=False, preserve_rng_state=True)
            else:
                x = layer(x, attn_mask)
        return x


class Pooler(nn.Module):
    """tanh(W h_[CLS] + b): BERT's sentence-level representation (sec. 3, NSP head input)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


class BertModel(nn.Module):
    """The encoder: returns (last hidden state (B, T, H), pooled [CLS] (B, H))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`attention_mask` (1 at tokens, 0 at padding) is applied whenever given: a caller with
        a batch without padding passes None, which lets SDPA pick its fastest kernel. The caller
        knows from its sequence lengths, on the host; finding out here would read the mask back
        from the device and make the host wait for it at every forward.
        Packed rows (several sequences end to end) pass a (B, T, T) boolean mask, True where query
        i may attend to key j (both in one sequence), and `position_ids` (B, T) restarting at
        each sequence; the pooled output is then of each row's first sequence only."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # A (B, 1, 1, T) boolean mask broadcasts over heads and query positions. An exported
        # ONNX graph, which must serve padded batches too, takes it in BERT's additive form (0
        # to attend, the float minimum at padding, added to the attention scores).
        attn_mask = None
        if attention_mask is not None and torch.onnx.is_in_onnx_export():
            attn_mask = (1.0 - attention_mask.unsqueeze(1).unsqueeze(2).float()) * torch.finfo(torch.float32).min
        elif attention_mask is not None and attention_mask.dim() == 3:
            attn_mask = attention_mask[:, None]  # (B, 1, T, T): per query, broadcast over heads
        elif attention_mask is not None:
            attn_mask = attention_mask.bool()[:, None, None, :]
        written_out = writes_out_attention(self.training, self.config.attention_probs_dropout_prob, input_ids.device)
        if attn_mask is not None and attn_mask.dtype == torch.bool and written_out:
            attn_mask = additive_mask(attn_mask)  # once, for all layers
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, T, H)
        x = self.encoder(x, attn_mask)  # (B, T, H)
        return x, self.pooler(x)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors that are not padding (Reimers and Gurevych 2019)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)


def flops_per_token(config: BertConfig, seq_len: int) -> float:
    """Forward matmul FLOPs per token (2 per multiply-add), attention scores included."""
    H, L, I = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 2 * (4 * H * H + 2 * H * I) + 2 * 2 * seq_len * H
    return L * per_layer + 2 * H * H / max(seq_len, 1)  # pooler once per sequence


__all__ = ["BertConfig", "BertModel", "mean_pool", "flops_per_token"]
