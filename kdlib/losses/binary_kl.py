"""BinaryKL and BinaryKLNorm (DHKD): every class an independent Bernoulli."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_pair, check_temperature, compute_dtype

_LOG2 = math.log(2.0)


def binary_kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """BinaryKL: every class an independent Bernoulli, ``q = sigmoid(t/T)``, ``p = sigmoid(s/T)``.

    ``L = T^2 * batch_mean( q log(q/p) + (1-q) log((1-q)/(1-p)) )``, with
    ``log q = logsigmoid(t/T)`` and ``log(1-q) = logsigmoid(-t/T)`` (same for p),
    so it stays finite at ``|x/T| = 100`` in fp32. Gradient w.r.t. ``s_c`` is
    ``T * (p_c - q_c)`` per row (before the 1/N).
    """
    check_pair(student, teacher)
    check_temperature(temperature)
    dt = compute_dtype(student, teacher)
    T = float(temperature)
    zs = student.to(dt) / T
    zt = teacher.detach().to(dt) / T
    q = torch.sigmoid(zt)
    q_bar = torch.sigmoid(-zt)  # 1 - q without cancellation
    elem = q * (F.logsigmoid(zt) - F.logsigmoid(zs)) + q_bar * (F.logsigmoid(-zt) - F.logsigmoid(-zs))
    return (T * T) * elem.sum(dim=1).mean()


def binary_kl_norm_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """BinaryKLNorm (DHKD's second-head loss): ``T^2 * batch_mean KL(Bern(0.5) || Bern(sigmoid((s-t)/T)))``.

    Each element equals ``log cosh(x)`` with ``x = (s - t) / (2T)``; it is
    evaluated as ``|x| + softplus(-2|x|) - log 2`` (no overflow for large
    ``|x|``). Gradient per element ``(T/2) * tanh(x)`` (before 1/N): MSE-like
    for small gaps, L1-like for large ones; symmetric in s and t and *not*
    shift-invariant.
    """
    check_pair(student, teacher)
    check_temperature(temperature)
    dt = compute_dtype(student, teacher)
    T = float(temperature)
    x = (student.to(dt) - teacher.detach().to(dt)) / (2.0 * T)
    ax = x.abs()
    elem = ax + F.softplus(-2.0 * ax) - _LOG2
    return (T * T) * elem.sum(dim=1).mean()
