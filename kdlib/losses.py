"""PyTorch reference implementations of the logit-distillation losses.

This module is the ground truth the rest of kdlib (and any fused kernel) is
checked against, so it favours clarity and numerical robustness over speed.
Formulas follow ``docs/methods.md`` (the project's specification).

Conventions shared by every function:

* ``student`` / ``teacher`` / ``logits`` are ``(N, C)`` floating-point logits,
  ``target`` is ``(N,)`` integer class labels.
* The result is a scalar *batch mean*: sum over the C classes, mean over the N
  rows.
* Computation runs in float32 at least: fp16/bf16 inputs are upcast and the loss
  is returned in float32; float64 inputs stay float64 (so ``gradcheck`` works).
* Teacher logits are constants: they are detached inside, no gradient reaches
  them.
* Every log-probability comes from ``log_softmax`` / ``logsigmoid`` /
  ``softplus`` / ``logsumexp``; nothing takes ``log`` of a clamped probability,
  so values and gradients stay finite and correct at ``|logit / T| = 100`` in
  float32.
* Bad shapes, dtypes or temperatures raise ``ValueError`` naming the argument.
  Label *values* are not range-checked here (that would force a device sync);
  an out-of-range label fails inside ``cross_entropy`` / ``gather``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "cross_entropy",
    "kd_loss",
    "binary_kl_loss",
    "binary_kl_norm_loss",
    "dkd_loss",
]

_LOG2 = math.log(2.0)


# --------------------------------------------------------------------------- #
# validation and dtype helpers
# --------------------------------------------------------------------------- #
def _check_logits(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, C), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    _check_logits(student, "student")
    _check_logits(teacher, "teacher")
    if student.shape != teacher.shape:
        raise ValueError(
            f"teacher shape {tuple(teacher.shape)} does not match student shape "
            f"{tuple(student.shape)}"
        )


def _check_target(target: torch.Tensor, n: int) -> None:
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer (long) tensor, got dtype {target.dtype}")
    if target.dim() != 1 or target.shape[0] != n:
        raise ValueError(f"target must have shape ({n},), got shape {tuple(target.shape)}")


def _check_temperature(temperature: float) -> None:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")


def _compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16 are upcast)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


# --------------------------------------------------------------------------- #
# losses
# --------------------------------------------------------------------------- #
def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy, batch mean: ``mean_n( -log_softmax(z_n)[y_n] )``.

    A thin wrapper over ``F.cross_entropy`` that adds the shared validation and
    the fp32-at-least upcast.
    """
    _check_logits(logits, "logits")
    _check_target(target, logits.shape[0])
    z = logits.to(_compute_dtype(logits))
    return F.cross_entropy(z, target.long(), reduction="mean")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD term (no CE): ``T^2 * mean_n KL(softmax(t/T) || softmax(s/T))``.

    The ``T^2`` keeps the gradient scale independent of ``T``. Shift-invariant
    per row (softmax is). ``KL = sum_c p_t (log p_t - log p_s)`` with both logs
    from ``log_softmax``.
    """
    _check_pair(student, teacher)
    _check_temperature(temperature)
    dt = _compute_dtype(student, teacher)
    T = float(temperature)
    log_ps = F.log_softmax(student.to(dt) / T, dim=1)
    log_pt = F.log_softmax(teacher.detach().to(dt) / T, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return (T * T) * kl.mean()


def binary_kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """BinaryKL: every class an independent Bernoulli, ``q = sigmoid(t/T)``, ``p = sigmoid(s/T)``.

    ``L = T^2 * batch_mean( q log(q/p) + (1-q) log((1-q)/(1-p)) )``, with
    ``log q = logsigmoid(t/T)`` and ``log(1-q) = logsigmoid(-t/T)`` (same for p),
    so it stays finite at ``|x/T| = 100`` in fp32. Gradient w.r.t. ``s_c`` is
    ``T * (p_c - q_c)`` per row (before the 1/N).
    """
    _check_pair(student, teacher)
    _check_temperature(temperature)
    dt = _compute_dtype(student, teacher)
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
    _check_pair(student, teacher)
    _check_temperature(temperature)
    dt = _compute_dtype(student, teacher)
    T = float(temperature)
    x = (student.to(dt) - teacher.detach().to(dt)) / (2.0 * T)
    ax = x.abs()
    elem = ax + F.softplus(-2.0 * ax) - _LOG2
    return (T * T) * elem.sum(dim=1).mean()


def dkd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """Decoupled KD term: ``T^2 * batch_mean(alpha * TCKD + beta * NCKD)``.

    No CE and no warmup factor: the caller adds CE and multiplies by
    ``min(epoch / warmup, 1)``. With ``p = softmax(z/T)``:
    ``TCKD = KL([p_t_y, 1-p_t_y] || [p_s_y, 1-p_s_y])`` and
    ``NCKD = KL(p_hat_t || p_hat_s)``, ``p_hat`` the softmax over the non-target
    logits only. The non-target logits are gathered exactly (no -inf mask, no
    1000-offset as in mdistiller, no data-dependent shapes), and the binary
    terms are in log space: ``log p_y = z_y - lse(z)``,
    ``log(1 - p_y) = lse(z_{!=y}) - lse(z)``, so it is stable at ``|z| = 100``
    in fp32. Needs ``C >= 2``.
    """
    _check_pair(student, teacher)
    n, c = student.shape
    if c < 2:
        raise ValueError(f"student must have at least 2 classes for DKD, got shape {tuple(student.shape)}")
    _check_target(target, n)
    _check_temperature(temperature)
    dt = _compute_dtype(student, teacher)
    T = float(temperature)
    y = target.long().to(student.device)

    # Column indices of the C-1 non-target classes of each row, in order.
    cols = torch.arange(c - 1, device=student.device)
    nt_idx = cols.unsqueeze(0) + (cols.unsqueeze(0) >= y.unsqueeze(1)).long()  # (N, C-1)

    def _parts(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lse = torch.logsumexp(z, dim=1)
        z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)
        z_nt = z.gather(1, nt_idx)
        lse_nt = torch.logsumexp(z_nt, dim=1)
        log_p_y = z_y - lse
        log_p_not_y = lse_nt - lse
        log_p_hat = z_nt - lse_nt.unsqueeze(1)  # log softmax over non-target classes
        return log_p_y, log_p_not_y, log_p_hat

    s_y, s_ny, s_hat = _parts(student.to(dt) / T)
    t_y, t_ny, t_hat = _parts(teacher.detach().to(dt) / T)

    tckd = t_y.exp() * (t_y - s_y) + t_ny.exp() * (t_ny - s_ny)
    nckd = (t_hat.exp() * (t_hat - s_hat)).sum(dim=1)
    return (T * T) * (alpha * tckd + beta * nckd).mean()
