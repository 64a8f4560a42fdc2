"""SinKD: the batch-wise Sinkhorn distance between student and teacher predictions, and the
soft cross-entropy the SinKD code uses as its KD term."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_pair, check_positive, check_temperature, compute_dtype


def sinkhorn_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, epsilon: float, iterations: int
) -> torch.Tensor:
    """SinKD batch-wise Sinkhorn distance between student and teacher predictions.

    Compares the two *sets* of predictions in the batch, so it also sees
    sample-to-sample structure. ``p = softmax(z / T)``, cost
    ``W[i, j] = ||p_s[i] - p_t[j]||_1``, ``K = exp(-W / eps)``; ``iterations``
    rounds of row-normalise then column-normalise give ``P``;
    ``L = sum_ij P_ij W_ij``, differentiated through the iterations (as the
    SinKD code). The rounds run in log space (``logP -= logsumexp``), which is
    the same ``P`` without underflow of ``exp(-W/eps)``. Note: ``P`` ends with
    column sums 1 (total mass N), so this is a *sum* over the batch as in the
    spec / SinKD code, not a batch mean.
    """
    check_pair(student, teacher)
    check_temperature(temperature)
    check_positive(epsilon, "epsilon")
    if isinstance(iterations, bool) or int(iterations) != iterations or int(iterations) < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    dt = compute_dtype(student, teacher)
    T = float(temperature)
    p_s = F.softmax(student.to(dt) / T, dim=1)
    p_t = F.softmax(teacher.detach().to(dt) / T, dim=1)
    W = (p_s.unsqueeze(1) - p_t.unsqueeze(0)).abs().sum(dim=2)  # (N, N)
    log_p = -W / float(epsilon)
    for _ in range(int(iterations)):
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True)
    return (log_p.exp() * W).sum()


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """SinKD's KD term: ``mean_n -sum_c softmax(t/T)_c log softmax(s/T)_c``, with no ``T^2``.

    The SinKD code's ``DistillKL`` (2018cx/SinKD, loss.py:15-17). It equals
    ``kd_loss(s, t, T) / T^2`` plus the teacher's entropy at ``T``, a constant: the same
    gradient as Hinton's KL divided by ``T^2``, a value larger by that entropy.
    """
    check_pair(student, teacher)
    check_temperature(temperature)
    dt = compute_dtype(student, teacher)
    T = float(temperature)
    log_ps = F.log_softmax(student.to(dt) / T, dim=1)
    p_t = F.softmax(teacher.detach().to(dt) / T, dim=1)
    return -(p_t * log_ps).sum(dim=1).mean()
