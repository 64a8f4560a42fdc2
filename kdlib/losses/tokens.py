"""Per-token distillation: padded (B, T, V) batches as rows, generalized JSD, and the teacher
restricted to its top-K (what a sparse top-K logit cache keeps).

Positions are rows: a language model's (B, T, V) logits become (N, V) with N the valid
(unpadded) positions, and every ``kdlib.losses`` function then runs unchanged. Since each
of them is a mean over its rows, **every loss on ``token_rows(...)`` is the mean over the
valid tokens of the batch** (not a mean of per-sequence means): a sequence weighs by its
number of valid tokens, as in TRL's GKD and MiniLLM. ``masked_token_mean`` is the same
reduction for a (B, T) tensor of per-token values.

The top-K functions take the teacher's top-K *logits* and its log-normaliser
``logsumexp(teacher logits)``: with both, the top-K probabilities ``exp(v - lse)`` are exact
and the tail mass ``1 - sum`` is known, so nothing is renormalised.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_logits, check_pair, check_temperature, compute_dtype
from kdlib.losses.kd import kl_rows
from kdlib.topk import _topk_log_probs, check_topk, log1mexp


def check_mask(mask: torch.Tensor, shape: tuple[int, ...]) -> None:
    """A (B, T) bool padding mask matching the first two dims of the batch, with a valid token."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool torch.Tensor (True = a real token), got {getattr(mask, 'dtype', type(mask))}")
    if mask.dim() != 2 or tuple(mask.shape) != tuple(shape[:2]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the batch's (B, T) = {tuple(shape[:2])}")
    if not bool(mask.any()):
        raise ValueError("mask selects no token: every position is padding, so a mean over tokens is undefined")


def token_rows(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The rows of the valid positions of a (B, T, ...) tensor: (N, ...) in batch-major order.

    ``mask`` is (B, T) bool, True for a real token; None keeps every position (B*T rows, the
    order a token model's forward returns). Works for logits (B, T, V) and targets (B, T).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape (B, T, ...), got {getattr(x, 'shape', type(x))}")
    if mask is None:
        return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    check_mask(mask, tuple(x.shape))
    return x[mask.to(x.device)]


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of per-token values (B, T) over the valid tokens: ``sum(values[mask]) / mask.sum()``.

    Padded positions are dropped, not multiplied by zero, so a NaN or inf there cannot leak
    into the result or its gradient.
    """
    if not isinstance(values, torch.Tensor) or values.dim() != 2:
        raise ValueError(f"values must have shape (B, T), got {getattr(values, 'shape', type(values))}")
    return token_rows(values, mask).mean()


def check_beta(beta: float) -> None:
    b = float(beta)
    if not (math.isfinite(b) and 0.0 <= b <= 1.0):
        raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")


def generalized_jsd_loss(
    student: torch.Tensor, teacher: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """GKD's generalized Jensen-Shannon divergence (Agarwal et al., 2024, Eq. 1), as TRL's
    ``GKDTrainer.generalized_jsd_loss``: ``T^2 * mean_n JSD_beta(p_t, p_s)`` with
    ``p = softmax(z / T)``, the mixture ``m = beta * p_t + (1 - beta) * p_s`` and
    ``JSD_beta = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)``.

    The ends are the two KLs, as TRL special-cases them: ``beta = 0`` is the forward KL
    ``KL(p_t || p_s)`` (``kd.kd_loss``, mode-covering) and ``beta = 1`` the reverse KL
    ``KL(p_s || p_t)`` (``kd.reverse_kl_loss``, mode-seeking). In between the value goes to
    0 at both ends (about ``beta * KL(p_t || p_s)`` for small beta), so the function is
    discontinuous at 0 and 1; its gradient's direction interpolates between the two KLs.
    The ``T^2`` is kdflow's (as ``kd_loss``); TRL has none, the same at its T = 1.
    """
    check_pair(student, teacher)
    check_beta(beta)
    check_temperature(temperature)
    dt = compute_dtype(student, teacher)
    T, b = float(temperature), float(beta)
    log_ps = F.log_softmax(student.to(dt) / T, dim=1)
    log_pt = F.log_softmax(teacher.detach().to(dt) / T, dim=1)
    if b == 0.0:
        jsd = kl_rows(log_pt, log_ps)
    elif b == 1.0:
        jsd = kl_rows(log_ps, log_pt)
    else:
        log_m = torch.logaddexp(log_pt + math.log(b), log_ps + math.log1p(-b))
        jsd = b * kl_rows(log_pt, log_m) + (1.0 - b) * kl_rows(log_ps, log_m)
    return (T * T) * jsd.mean()


def tail_kd_loss(
    student: torch.Tensor,
    topk_logits: torch.Tensor,
    topk_indices: torch.Tensor,
    log_normalizer: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL from a top-K teacher record over K + 1 buckets: the K cached tokens, and the tail
    (every other token) as one bucket. ``T^2 * mean_n KL(P_t || P_s)`` with
    ``P_t = [exp(v_k / T - lse), 1 - sum_k]`` and ``P_s`` the student's ``softmax(s / T)``
    at the same K indices plus its mass on all the others.

    Nothing of size (N, V) is built for the teacher: its K + 1 probabilities come straight
    from the record. ``log_normalizer`` must be ``logsumexp(teacher / T)`` at this ``T``
    (a T = 1 cache fits only ``temperature = 1``). Unlike KL to the dense
    ``topk_restricted_log_probs``, it asks nothing of how the student spreads its tail:
    ``KL(restricted || q) = tail_kd + r * KL(uniform || q's tail, renormalised)``. A
    teacher tail that rounds to <= 0 counts as 0; with K = V the tail bucket is empty.
    """
    check_logits(student, "student")
    n, vocab = student.shape
    check_topk(topk_logits, topk_indices, log_normalizer, vocab)
    if topk_logits.shape[0] != n:
        raise ValueError(f"topk_logits has {topk_logits.shape[0]} rows, student has {n}")
    check_temperature(temperature)
    T = float(temperature)
    dt = compute_dtype(student, topk_logits, log_normalizer)
    k = topk_logits.shape[1]
    idx = topk_indices.to(student.device).long()
    log_t = _topk_log_probs(topk_logits.to(dt) / T, log_normalizer.to(dt), dt)
    log_s_all = F.log_softmax(student.to(dt) / T, dim=1)
    log_s = log_s_all.gather(1, idx)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    if k < vocab:
        log_t_tail = log1mexp(torch.logsumexp(log_t, dim=1))
        p_t_tail = log_t_tail.exp()
        log_t_tail = torch.where(p_t_tail > 0, log_t_tail, torch.zeros_like(log_t_tail))  # 0 * finite, never nan
        log_s_tail = torch.logsumexp(log_s_all.scatter(1, idx, -math.inf), dim=1)
        kl = kl + p_t_tail * (log_t_tail - log_s_tail)
    return (T * T) * kl.mean()
