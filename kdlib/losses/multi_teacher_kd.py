"""Multi-teacher KD with MTARD's entropy balance (Zhao et al., ECCV 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_logits, check_temperature, compute_dtype


def _check_teacher_stack(teachers: torch.Tensor) -> None:
    if not isinstance(teachers, torch.Tensor) or not teachers.is_floating_point() or teachers.dim() != 3:
        raise ValueError(
            f"teachers must be a floating-point tensor of shape (K, N, C), got {getattr(teachers, 'shape', teachers)}"
        )
    if 0 in teachers.shape:
        raise ValueError(f"teachers must be non-empty, got shape {tuple(teachers.shape)}")


def mean_entropy(logits: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """``mean_n H(softmax(z_n / T))`` in nats; `logits` (..., N, C), `temperature` broadcast
    over the leading dimensions (a tensor of shape (K,) for a (K, N, C) stack)."""
    T = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    log_p = F.log_softmax(logits / T.reshape(T.shape + (1, 1)), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1).mean(dim=-1)


def entropy_balanced_temperatures(
    teachers: torch.Tensor, temperature: float, max_temperature: float, iterations: int = 50
) -> torch.Tensor:
    """Per-teacher temperatures at which every teacher's soft targets carry the same entropy.

    MTARD's entropy-based balance (Zhao et al., ECCV 2022; the B-MTARD code): each step,
    every teacher's temperature moves by a fixed amount towards equal mean entropy
    ``H_k(tau) = mean_n H(softmax(t_k[n] / tau))``, starting from and clipped to
    ``[1, 10]``. From that start the sharper teachers warm up until they reach the
    softest teacher's entropy, so its fixed point is computed here directly, per batch:
    ``H* = max_k H_k(temperature)`` and ``tau_k`` the smallest ``tau`` in
    ``[temperature, max_temperature]`` with ``H_k(tau) >= H*`` (bisection: ``H_k`` grows
    with ``tau``), or ``max_temperature`` when even that falls short. Solving it per batch
    keeps the method stateless (a resumed run sees the same temperatures). Returns (K,)
    constants (no gradient), float64.
    """
    _check_teacher_stack(teachers)
    check_temperature(temperature)
    check_temperature(max_temperature)
    if max_temperature < temperature:
        raise ValueError(f"max_temperature ({max_temperature}) must be >= temperature ({temperature})")
    with torch.no_grad():
        t = teachers.detach().double()
        k = t.shape[0]
        lo = torch.full((k,), float(temperature), dtype=torch.float64, device=t.device)
        hi = torch.full((k,), float(max_temperature), dtype=torch.float64, device=t.device)
        at_base = mean_entropy(t, lo)
        target = at_base.max()
        reachable = mean_entropy(t, hi) >= target
        hi = torch.where(at_base >= target, lo, hi)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            enough = mean_entropy(t, mid) >= target
            hi = torch.where(enough, mid, hi)
            lo = torch.where(enough, lo, mid)
        return torch.where(reachable, hi, torch.full_like(hi, float(max_temperature)))


KD_REDUCTIONS = ("mean", "batchmean")


def multi_teacher_kd_loss(
    student: torch.Tensor,
    teachers: torch.Tensor,
    temperatures: torch.Tensor,
    reduction: str = "mean",
    target_log_eps: float = 1e-5,
) -> torch.Tensor:
    """``mean_k`` of each teacher's ``p_k log(p_k + eps) - p_k log softmax(s)``, reduced.

    ``p_k = softmax(t_k / tau_k)``. As MTARD: only the teachers' targets are tempered (the
    student's logits are not), so a teacher's temperature sets the entropy of the target the
    student is pulled to, which is what the entropy balance equalises; no ``T^2`` factor (the
    student is at T = 1); equal weights 1/K. `teachers` (K, N, C), `temperatures` (K,), both
    constants here.

    * ``reduction="mean"`` (default): the mean over the batch *and* the classes, MTARD's
      ``torch.mean`` of its elementwise ``kl_loss`` (``resnet18_mtard_cifar10.py:56-58,125-126``);
      ``"batchmean"``: summed over the classes, mean over the batch (the per-row KL,
      ``C`` times the former: kdflow's before).
    * ``target_log_eps`` (default ``1e-5``, MTARD's ``torch.log(b + 1e-5)``): added to the
      target probability inside its own log; ``0`` gives the exact KL. It shifts the value
      only (the target is a constant): the student's gradient is the same.
    """
    check_logits(student, "student")
    _check_teacher_stack(teachers)
    if teachers.shape[1:] != student.shape:
        raise ValueError(f"teachers shape {tuple(teachers.shape)} does not match student shape (K, *{tuple(student.shape)})")
    if not isinstance(temperatures, torch.Tensor) or temperatures.shape != (teachers.shape[0],) or not bool((temperatures > 0).all()):
        raise ValueError(f"temperatures must be a positive tensor of shape ({teachers.shape[0]},), got {temperatures!r}")
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KD_REDUCTIONS}, got {reduction!r}")
    if not (isinstance(target_log_eps, (int, float)) and 0 <= float(target_log_eps) < float("inf")):
        raise ValueError(f"target_log_eps must be a finite number >= 0, got {target_log_eps!r}")
    dt = compute_dtype(student, teachers)
    log_ps = F.log_softmax(student.to(dt), dim=1)
    taus = temperatures.detach().to(device=teachers.device, dtype=dt).reshape(-1, 1, 1)
    log_pt = F.log_softmax(teachers.detach().to(dt) / taus, dim=2)
    p_t = log_pt.exp()
    log_target = log_pt if float(target_log_eps) == 0 else torch.log(p_t + float(target_log_eps))
    per_row = (p_t * (log_target - log_ps.unsqueeze(0))).sum(dim=2)
    loss = per_row.mean()
    return loss / student.shape[1] if reduction == "mean" else loss
