"""USKD (Yang et al., ICCV 2023): self-distillation with a weak head, no teacher."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlib.losses.checks import check_logits, check_min_classes, check_target, compute_dtype, nontarget_index


NONTARGET_RANKS = ("official", "paper")


def uskd_terms(
    student: torch.Tensor, weak: torch.Tensor, target: torch.Tensor, nontarget_rank: str = "official"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """USKD's three unweighted terms ``(L_target, L_non, L_weak)``, each a batch mean.

    Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation" (ICCV 2023),
    checked against the authors' code (yzd-v/cls_KD, USKDLoss), hard labels only:

    * ``L_target = -mean_n(p_n * log s_y)`` with the soft target
      ``p_n = 1 + s_y^2 - mean_batch(s_y^2)`` (``s = softmax(student)``, detached): the
      student's own squared target probability, centred over the batch, added to the label 1.
    * ``L_non = -mean_n sum_{i != y} z_i * log S_hat_i``, ``S_hat`` the softmax over the
      non-target logits; all C classes are ranked by a key (below), descending, ties to the
      lower class index; ``z_i = 1 / rank_i`` (Zipf), kept for the non-target classes and
      normalised over them, as the code does.
    * ``L_weak``: the weak head's cross-entropy against the label smoothed to
      ``0.9 * onehot + 0.1 / C``.

    The ranking key, where the specification and the code differ (``w = softmax(weak)``):

    * ``nontarget_rank="official"`` (default): the code's
      ``w_i / (1 - w_y + 1e-6) + log s_i / (1 - log s_y + 1e-6)`` (cls_KD ``uskd.py:73``; its
      ``s_i`` and ``s_t`` were overwritten by the final head's log-probabilities at lines
      53-54), in float64.
    * ``nontarget_rank="paper"``: the probabilities the specification writes,
      ``w_i / (1 - w_y) + s_i / (1 - s_y)``, each ratio computed as ``exp(z_i - lse(z_{!=y}))``
      (exact, no ``1e-6``): kdflow's key before the setting existed.

    Soft labels and ranks are constants: the gradient reaches the student through
    ``log s_y`` and ``log S_hat``, the weak head (and the backbone below it) through
    ``L_weak`` only. Needs ``C >= 2``.
    """
    check_logits(student, "student")
    check_logits(weak, "weak")
    if weak.shape != student.shape:
        raise ValueError(f"weak shape {tuple(weak.shape)} does not match student shape {tuple(student.shape)}")
    n, c = student.shape
    check_min_classes(student, "student", 2, "USKD")
    check_target(target, n)
    if nontarget_rank not in NONTARGET_RANKS:
        raise ValueError(f"nontarget_rank must be one of {NONTARGET_RANKS}, got {nontarget_rank!r}")
    dt = compute_dtype(student, weak)
    y = target.long().to(student.device)
    s = student.to(dt)
    w = weak.to(dt)
    log_s = F.log_softmax(s, dim=1)
    log_s_y = log_s.gather(1, y.unsqueeze(1)).squeeze(1)
    s_y_sq = log_s_y.detach().exp() ** 2
    soft_target = 1.0 + s_y_sq - s_y_sq.mean()
    l_target = -(soft_target * log_s_y).mean()

    nt = nontarget_index(y, c)
    s_nt = s.gather(1, nt)
    with torch.no_grad():
        if nontarget_rank == "official":
            key = _official_rank_key(s, w, y)
        else:
            key = _odds_over_nontarget(w, nt) + _odds_over_nontarget(s, nt)
        order = torch.sort(key, dim=1, descending=True, stable=True).indices
        rank = torch.argsort(order, dim=1)  # 0-based rank of each class among all C
        zipf = (1.0 / (rank + 1).to(dt)).gather(1, nt)
        zipf = zipf / zipf.sum(dim=1, keepdim=True)
    l_non = -(zipf * F.log_softmax(s_nt, dim=1)).sum(dim=1).mean()

    l_weak = F.cross_entropy(w, y, label_smoothing=0.1)
    return l_target, l_non, l_weak


def _official_rank_key(s: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cls_KD's ranking key (``uskd.py:53-54,69-73``), in float64 (a ranking key only):
    ``w_i / (1 - w_y + 1e-6) + log s_i / (1 - log s_y + 1e-6)``, ``w = softmax(weak)`` and
    ``log s = log_softmax(student)`` (the code's ``s_i``, ``s_t`` after their overwrite)."""
    lab = y.unsqueeze(1)
    w_p = F.softmax(w.detach().double(), dim=1)
    log_s = F.log_softmax(s.detach().double(), dim=1)
    return w_p / (1 - w_p.gather(1, lab) + 1e-6) + log_s / (1 - log_s.gather(1, lab) + 1e-6)


def _odds_over_nontarget(z: torch.Tensor, nt: torch.Tensor) -> torch.Tensor:
    """``p_i / (1 - p_y)`` for every class, ``p = softmax(z)``: ``exp(z_i - lse(z_{!=y}))``.

    The non-target softmax for ``i != y`` and the odds ``p_y / (1 - p_y)`` for the target,
    without forming ``1 - p_y``; in float64 (a ranking key only), inf past its range.
    """
    z = z.detach().double()
    return (z - torch.logsumexp(z.gather(1, nt), dim=1, keepdim=True)).exp()


def uskd_loss(
    student: torch.Tensor,
    weak: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    mu: float,
    nontarget_rank: str = "official",
) -> torch.Tensor:
    """USKD term (no CE): ``alpha * L_target + beta * L_non + mu * L_weak`` (see `uskd_terms`,
    and its `nontarget_rank`).

    CIFAR defaults of the authors' config: alpha = beta = mu = 0.1; CE on the student's
    own head is added by the caller with weight 1.
    """
    l_target, l_non, l_weak = uskd_terms(student, weak, target, nontarget_rank)
    return float(alpha) * l_target + float(beta) * l_non + float(mu) * l_weak
