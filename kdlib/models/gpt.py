"""A small decoder-only transformer (nanoGPT-style), for language-model distillation.

The same contract as every image model, with *positions as rows*: ``forward`` takes token
ids ``idx`` of shape (B, T) and returns ``(logits, feature)`` flattened to (B*T, V) and
(B*T, D), one row per position, so every loss of ``kdlib.losses`` (which sees (N, C) rows)
and every method works per token unchanged; the training loop flattens the (B, T) targets
the same way. ``classifier`` is an untied ``nn.Linear(D, V, bias=False)`` (not the token
embedding), so ``DualHead`` reads its ``in_features`` / ``out_features`` like any head.

Architecture: learned token and position embeddings, ``n_layer`` pre-LayerNorm blocks
(causal self-attention through ``F.scaled_dot_product_attention(is_causal=True)``, then a
4x GELU MLP, each on a residual branch), a final LayerNorm, then the head. Initialisation
as GPT-2 / nanoGPT: every linear and embedding weight N(0, 0.02), biases zero, and the two
projections that write into the residual stream N(0, 0.02 / sqrt(2 * n_layer)), so the
stream's variance does not grow with depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INIT_STD = 0.02


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t only."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.proj.residual = True  # scaled init: it writes into the residual stream
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (B, T, D) -> (B, heads, T, D / heads)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class MLPBlock(nn.Module):
    """The position-wise feed-forward branch: Linear(D, 4D), GELU, Linear(4D, D)."""

    def __init__(self, n_embd: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)
        self.proj.residual = True
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = MLPBlock(n_embd, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only language model: ``model(idx) -> (logits (B*T, V), feature (B*T, D))``.

    ``vocab_size`` is the number of classes of every row; ``context`` the longest sequence
    it accepts (the position table's length): a longer one raises ``ValueError``.
    """

    def __init__(
        self, vocab_size: int, context: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context", context), ("n_layer", n_layer),
                            ("n_head", n_head), ("n_embd", n_embd)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.vocab_size = vocab_size
        self.context = context
        self.n_layer = n_layer
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(context, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.feature_dim: int = n_embd
        self.classifier = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = INIT_STD / math.sqrt(2 * self.n_layer) if getattr(module, "residual", False) else INIT_STD
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, INIT_STD)

    def forward(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        if idx.dim() != 2 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise ValueError(
                f"GPT takes token ids of shape (B, T) and an integer dtype, got shape {tuple(idx.shape)} "
                f"and dtype {idx.dtype}"
            )
        t = idx.shape[1]
        if not 1 <= t <= self.context:
            raise ValueError(f"sequence length {t} is outside 1..{self.context}, the model's context")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        feature = self.ln_f(x).reshape(-1, self.feature_dim)
        return self.classifier(feature), feature


def _sized(n_layer: int, n_head: int, n_embd: int) -> Callable[..., GPT]:
    def build(num_classes: int, in_channels: int = 1, image_size: int = 64) -> GPT:
        """The registry's shared signature: ``num_classes`` is the vocabulary size and
        ``image_size`` the context length (the longest sequence); ``in_channels`` is unused."""
        return GPT(num_classes, image_size, n_layer, n_head, n_embd)

    return build


SIZES: dict[str, tuple[int, int, int]] = {
    "gpt_nano": (1, 2, 64),
    "gpt_micro": (2, 3, 96),
    "gpt_mini": (4, 4, 128),
    "gpt_small": (6, 6, 192),
}
"""(n_layer, n_head, n_embd) of each named size; every head is 32 wide."""

ARCHS: dict[str, Callable[..., nn.Module]] = {name: _sized(*size) for name, size in SIZES.items()}
