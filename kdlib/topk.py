"""A teacher restricted to its top-K: what a top-K record (the K largest logits, their ids and
the log-normaliser) says about the full distribution over the vocabulary.

The token cache (`kdlib.token_cache`) stores such records and serves this restriction to
students that read dense teacher logits; `restrict_to_topk` makes the same target from a live
teacher. It is not a loss: the teacher-side steps that write the cache depend on it, and on
no distillation code.
"""
from __future__ import annotations

import math

import torch

from kdlib.checks import check_logits, compute_dtype


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(a))`` for ``a <= 0``, accurate at both ends (Maechler 2012); -inf at a >= 0."""
    a = a.clamp_max(0.0)
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def check_topk(topk_logits: torch.Tensor, topk_indices: torch.Tensor, log_normalizer: torch.Tensor, vocab: int) -> None:
    """Shapes and dtypes of a top-K teacher record: (N, K) logits, (N, K) indices, (N,) lse."""
    check_logits(topk_logits, "topk_logits")
    n, k = topk_logits.shape
    if not 1 <= k <= vocab:
        raise ValueError(f"topk_logits must have 1 <= K <= vocab = {vocab} columns, got shape {tuple(topk_logits.shape)}")
    if not isinstance(topk_indices, torch.Tensor) or topk_indices.is_floating_point() or topk_indices.is_complex() \
            or topk_indices.dtype == torch.bool:
        raise ValueError("topk_indices must be an integer torch.Tensor")
    if topk_indices.shape != topk_logits.shape:
        raise ValueError(
            f"topk_indices shape {tuple(topk_indices.shape)} does not match topk_logits shape {tuple(topk_logits.shape)}"
        )
    if not isinstance(log_normalizer, torch.Tensor) or not log_normalizer.is_floating_point():
        raise ValueError("log_normalizer must be a floating-point torch.Tensor")
    if tuple(log_normalizer.shape) != (n,):
        raise ValueError(f"log_normalizer must have shape ({n},), got shape {tuple(log_normalizer.shape)}")


def _topk_log_probs(topk_logits: torch.Tensor, log_normalizer: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    return topk_logits.detach().to(dt) - log_normalizer.detach().to(device=topk_logits.device, dtype=dt).unsqueeze(1)


TAIL_FLOOR = 1e-12
"""The least tail mass `topk_restricted_log_probs` gives the tokens outside the top-K."""


def topk_restricted_log_probs(
    topk_logits: torch.Tensor, topk_indices: torch.Tensor, log_normalizer: torch.Tensor, vocab: int
) -> torch.Tensor:
    """Dense (N, vocab) log-probabilities of the teacher restricted to its top-K.

    The K cached tokens keep their exact probabilities ``exp(v - lse)``; the tail mass
    ``r = 1 - sum_k exp(v_k - lse)`` is spread uniformly over the other ``vocab - K``
    tokens (``log(r / (vocab - K))`` each, through ``log1mexp``: no cancellation beyond
    what the record itself rounds). The row sums to 1 up to rounding. A tail mass below
    ``TAIL_FLOOR`` (1e-12) is taken as ``TAIL_FLOOR``: a softmax teacher gives every token a
    positive probability, a tail that small is below the record's rounding (fp16 values summing
    past 1 give a negative estimate), and a finite floor keeps every dense loss finite (a
    z-score or a per-class binary KL of a -inf logit is nan). ``K = vocab`` is the
    full softmax. Indices in a row are assumed distinct. At T = 1: the tail's shape is
    unknown, so it cannot be softened. Constant: no gradient flows to the inputs.
    """
    check_topk(topk_logits, topk_indices, log_normalizer, vocab)
    n, k = topk_logits.shape
    dt = compute_dtype(topk_logits, log_normalizer)
    top = _topk_log_probs(topk_logits, log_normalizer, dt)
    if k < vocab:
        tail = log1mexp(torch.logsumexp(top, dim=1, keepdim=True)).clamp_min(math.log(TAIL_FLOOR)) - math.log(vocab - k)
    else:
        tail = top.new_full((n, 1), -math.inf)
    return tail.expand(n, vocab).scatter(1, topk_indices.to(top.device).long(), top)


def restrict_to_topk(teacher_logits: torch.Tensor, k: int) -> torch.Tensor:
    """The live teacher restricted to its top-``k``: ``topk_restricted_log_probs`` of its own
    top-k logits and log-normaliser, so a student trained against the live teacher sees the
    same (N, V) target as one trained from a top-k cache of it (before the cache's rounding)."""
    check_logits(teacher_logits, "teacher_logits")
    vocab = teacher_logits.shape[1]
    if not 1 <= int(k) <= vocab:
        raise ValueError(f"k must be in 1..{vocab} (the vocabulary), got {k!r}")
    t = teacher_logits.detach()
    values, indices = t.topk(int(k), dim=1)
    return topk_restricted_log_probs(values, indices, torch.logsumexp(t.to(compute_dtype(t)), dim=1), vocab)
