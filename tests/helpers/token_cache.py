"""Stand-ins for the token-cache tests: a tiny token model and the top-K restriction written
independently of `kdlib.losses.tokens`, so the cache is checked against a formula of its own."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class TokenModel(nn.Module):
    """Embedding + dropout + linear head: windows (B, T) int64 -> (logits (B*T, V), feature (B*T, D)).

    `fp16_exact`: logits rounded to fp16 values (kept in fp32), so a cache storing them in fp16
    holds them exactly and cache-vs-live comparisons can be tight; `boost`: token ids whose logit
    is raised by 30 at every position (they become the top-K, to test index edge cases).
    """

    def __init__(self, vocab: int, dim: int = 8, dropout: float = 0.0, fp16_exact: bool = False,
                 boost: tuple[int, ...] = (), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, vocab)
        self.fp16_exact = fp16_exact
        bias = torch.zeros(vocab)
        bias[list(boost)] = 30.0
        self.register_buffer("boost", bias)

    def forward(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.drop(self.embed(idx)).reshape(-1, self.embed.embedding_dim)
        logits = self.classifier(feature) + self.boost
        if self.fp16_exact:
            logits = logits.half().float()
        return logits, feature


def live_rows(teacher: nn.Module, windows: Tensor) -> Tensor:
    """The teacher's fp32 logits (N*T, V) on `windows`, in eval mode: no cache code involved."""
    with torch.no_grad():
        return teacher.eval()(windows)[0].float()


def restricted_reference(logits: Tensor, indices: Tensor) -> Tensor:
    """Log-probs (N, V) of the teacher restricted to the token ids `indices` (N, K): their
    probabilities kept, the remaining mass shared equally by the other V - K ids."""
    n, v = logits.shape
    logp = logits.double().log_softmax(dim=1)
    keep = torch.zeros(n, v, dtype=torch.bool).scatter(1, indices, True)
    kept = torch.where(keep, logp.exp(), torch.zeros_like(logp))
    others = v - indices.shape[1]
    if others == 0:
        return logp.float()
    tail = (1.0 - kept.sum(dim=1, keepdim=True)).clamp_min(1e-30) / others
    return torch.where(keep, logp, tail.log().expand(n, v)).float()
