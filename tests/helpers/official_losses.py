"""Independent restatements of the official codes' loss computations, for
tests/methods/test_official_defaults.py.

Each function follows one official file's arithmetic and conventions (reduction, T^2,
detach, warmup, clamps, eps, masking tricks) as it was read, written again here (not
copied) in plain torch. Sources, pinned (the mirror's commit; file:line):

- mdistiller: megvii-research/mdistiller a08d46f10d6102bd6e3f258ca5ac880b020ea259
  `mdistiller/distillers/KD.py:8-13,31-34`, `DKD.py:8-51,71-79`, `_base.py:51-54` (Vanilla),
  `engine/cfg.py:60-64` (KD: T 4, CE 0.1, KD 0.9), `:162-167` (DKD: CE 1, alpha 1, beta 8, T 4,
  warmup 20), `engine/trainer.py:78` (epochs count from 1).
- logit standardization: sunshangquan/logit-standardization-KD f6e5aa5172bad618e801163c3385322eea673754
  `mdistiller/distillers/KD.py:7-19,38-41`, `mdistiller/engine/cfg.py:61-65`,
  `tools/train.py:102-104,110-114` (`--logit-stand --base-temp 2 --kd-weight 9`).
- DIST: hunto/image_classification_sota d9662f7df68fe46b973c4580b7c9b896cedcd301 (the commit
  hunto/DIST_KD 2418f18 pins as its `classification` submodule)
  `lib/models/losses/dist_kd.py:4-34`, `lib/models/losses/kd_loss.py:31-33,57`,
  `configs/strategies/distill/dist_cifar.yaml:15,34-36` (smoothing 0, CE 1, KD weight 2, dist_t4),
  `tools/train.py:60-61` (nn.CrossEntropyLoss).
- NKD, USKD: yzd-v/cls_KD 1e5d48f36957ee460d39d7ebc592c6cc7f8f3d66
  `mmcls/models/dis_losses/nkd.py:23-51`, `mmcls/models/dis_losses/uskd.py:31-95`,
  `configs/distillers/cifar100/res34_distill_res18_cifar.py:64-70` (NKD T 3, gamma 3.5),
  `configs/distillers/cifar100/res18_sd_cifar.py:21-29` (USKD alpha 0.1, beta 0.1, mu 0.1),
  `configs/_base_/models/resnet18_cifar.py:15` (CE weight 1), `mmcls/models/classifiers/distiller.py:122,168,179`.
- DHKD: penghui-yang/DHKD 7976c69d408e72b4203d04a6e82dc27792ec1469
  `distiller_zoo/BinaryKL.py:13-20`, `distiller_zoo/BinaryKLNorm.py:13-19`, `distiller_zoo/KD.py:11-14`,
  `helper/loops.py:105-125`, `helper/optimizer.py:33-60,62-72,75-131`, `train_student.py:73-78,164-168`.
- ND (KD++ / DKD++): WangYZ1608/Knowledge-Distillation-via-ND fc6f3f9058ed35189a1d3c0a79a7594025e4d88f
  `CIFAR/utils.py:44-142`, `CIFAR/train_cifar_kd.py:49-56,170,260-264`,
  `CIFAR/train_cifar_dkd.py:50-56,170,260-265`, `CIFAR/train_cifar.sh:4,27`.
- TinyViT sparse KD: microsoft/Cream 4a13c4091e78f9abd2160e7e01c02e48c1cf8fb9
  `TinyViT/main.py:93-97` (SoftTargetCrossEntropy alone when distilling), `:325-330`.
- MTARD: zhaoshiji123/MTARD-extension 93506d69de6b736eba98c9d55e6ccabb89d27dcd
  `resnet18_mtard_cifar10.py:47-50,56-62,90-94,122-134,169`.
- No official code found (restated from the paper / specification formula instead): PLD
  (arXiv 2506.12542), Z-loss (arXiv 1604.08859), BD-KD (arXiv 2212.12965; kdflow's documented
  interpretation of the weighting).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


# ----------------------------------------------------------------------------------------- #
# small pieces
# ----------------------------------------------------------------------------------------- #
def _softmax(z: Tensor) -> Tensor:
    e = (z - z.max(dim=1, keepdim=True).values).exp()
    return e / e.sum(dim=1, keepdim=True)


def _log_softmax(z: Tensor) -> Tensor:
    m = z.max(dim=1, keepdim=True).values
    return z - m - (z - m).exp().sum(dim=1, keepdim=True).log()


def _kl_div_elements(log_input: Tensor, target: Tensor) -> Tensor:
    """torch's `kl_div(input, target)` pointwise: target * (log target - input), 0 where target is 0."""
    return torch.where(target > 0, target * (target.clamp_min(1e-300).log() - log_input), torch.zeros_like(target))


def hard_ce(z: Tensor, y: Tensor) -> Tensor:
    """nn.CrossEntropyLoss / F.cross_entropy, mean reduction."""
    return -_log_softmax(z).gather(1, y.unsqueeze(1)).mean()


# ----------------------------------------------------------------------------------------- #
# mdistiller (KD, DKD, Vanilla) and the DHKD / ND copies of the same KD
# ----------------------------------------------------------------------------------------- #
def mdistiller_kd_loss(s: Tensor, t: Tensor, T: float) -> Tensor:
    """KD.py:8-13: kl_div(reduction='none').sum(1).mean() * T^2 (the teacher is no_grad)."""
    t = t.detach()
    return _kl_div_elements(_log_softmax(s / T), _softmax(t / T)).sum(dim=1).mean() * T**2


def distill_kl_sum(s: Tensor, t: Tensor, T: float) -> Tensor:
    """DHKD distiller_zoo/KD.py:11-14 and ND CIFAR/utils.py:79-84 (batchmean):
    kl_div summed over everything, divided by the batch, times T^2."""
    t = t.detach()
    return _kl_div_elements(_log_softmax(s / T), _softmax(t / T)).sum() * T**2 / s.shape[0]


def mdistiller_kd(s, t, y, T=4.0, ce_weight=0.1, kd_weight=0.9):
    """KD.forward_train (KD.py:31-34) with cfg.py:60-64 defaults."""
    return {"ce": ce_weight * hard_ce(s, y), "kd": kd_weight * mdistiller_kd_loss(s, t, T)}


def mdistiller_dkd_loss(s: Tensor, t: Tensor, y: Tensor, alpha: float, beta: float, T: float) -> Tensor:
    """DKD.py:8-32: TCKD on the (target, rest) masses through log of the summed probabilities,
    NCKD with the target logit pushed down by 1000 (on z / T), each kl_div summed / N * T^2."""
    t = t.detach()
    n = y.shape[0]
    gt = torch.zeros_like(s).scatter(1, y.unsqueeze(1), 1.0)
    other = 1.0 - gt
    p_s, p_t = _softmax(s / T), _softmax(t / T)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * other).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * other).sum(1)], dim=1)
    tckd = _kl_div_elements(b_s.log(), b_t).sum() * T**2 / n
    nckd = _kl_div_elements(_log_softmax(s / T - 1000.0 * gt), _softmax(t / T - 1000.0 * gt)).sum() * T**2 / n
    return alpha * tckd + beta * nckd


def mdistiller_dkd(s, t, y, epoch_from_1, ce_weight=1.0, alpha=1.0, beta=8.0, T=4.0, warmup=20):
    """DKD.forward_train (DKD.py:71-79): CE + min(epoch / warmup, 1) * dkd_loss; epoch counts from 1."""
    return {
        "ce": ce_weight * hard_ce(s, y),
        "dkd": min(epoch_from_1 / warmup, 1.0) * mdistiller_dkd_loss(s, t, y, alpha, beta, T),
    }


# ----------------------------------------------------------------------------------------- #
# logit standardization (LS repo): KD on z-scored logits
# ----------------------------------------------------------------------------------------- #
def ls_normalize(z: Tensor) -> Tensor:
    """KD.py:7-10: (z - mean) / (1e-7 + std), std unbiased (torch default)."""
    mean = z.mean(dim=-1, keepdim=True)
    var = ((z - mean) ** 2).sum(dim=-1, keepdim=True) / (z.shape[-1] - 1)
    return (z - mean) / (1e-7 + var.sqrt())


def ls_kd(s, t, y, T=2.0, ce_weight=0.1, kd_weight=9.0):
    """LS KD.forward_train with --logit-stand --base-temp 2 --kd-weight 9 (CE on the raw logits)."""
    return {"ce": ce_weight * hard_ce(s, y), "kd": kd_weight * mdistiller_kd_loss(ls_normalize(s), ls_normalize(t), T)}


# ----------------------------------------------------------------------------------------- #
# DIST (image_classification_sota)
# ----------------------------------------------------------------------------------------- #
def _pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.pow(2).sum(1).sqrt() * b.pow(2).sum(1).sqrt() + eps)


def dist_official(s, t, y, tau=4.0, beta=1.0, gamma=1.0, ori_weight=1.0, kd_weight=2.0):
    """KDLoss.__call__ (kd_loss.py:57) with `kd: dist_t4` (DIST(beta=1, gamma=1, tau=4),
    kd_loss.py:31-33) and the CIFAR weights ori 1, kd 2 (dist_cifar.yaml:34-36)."""
    t = t.detach()
    y_s, y_t = _softmax(s / tau), _softmax(t / tau)
    inter = tau**2 * (1 - _pearson(y_s, y_t).mean())
    intra = tau**2 * (1 - _pearson(y_s.t(), y_t.t()).mean())
    return {"ce": ori_weight * hard_ce(s, y), "dist": kd_weight * (beta * inter + gamma * intra)}


# ----------------------------------------------------------------------------------------- #
# NKD and USKD (cls_KD)
# ----------------------------------------------------------------------------------------- #
def _drop_target(z: Tensor, y: Tensor) -> Tensor:
    keep = torch.ones_like(z, dtype=torch.bool).scatter(1, y.unsqueeze(1), False)
    return z[keep].reshape(z.shape[0], -1)


def nkd_official(s, t, y, temp=3.0, gamma=3.5, ce_weight=1.0):
    """NKDLoss.forward (nkd.py:23-51), hard labels; CE of the student head beside it."""
    t = t.detach()
    lab = y.unsqueeze(1)
    s_t = _log_softmax(s).gather(1, lab)
    t_t = _softmax(t).gather(1, lab)
    loss_t = -(t_t * s_t).mean()
    S = _log_softmax(_drop_target(s, y) / temp)
    Tn = _softmax(_drop_target(t, y) / temp)
    loss_non = -gamma * temp**2 * (Tn * S).sum(1).mean()
    return {"ce": ce_weight * hard_ce(s, y), "nkd": loss_t + loss_non}


def uskd_official(s, w, y, alpha=0.1, beta=0.1, mu=0.1, ce_weight=1.0, rank_key="official"):
    """USKDLoss.forward (uskd.py:31-95), hard labels; `w` the weak head's logits (its fc output).

    `rank_key`: "official" ranks by `w_i/(1 - w_y + 1e-6) + log s_i/(1 - s_y + 1e-6)`, as the code
    does (line 73: `s_i` was overwritten by `log_softmax` at line 53, `s_t` by the gathered
    log-probability at line 54); "probabilities" uses `s_i` and `s_y` as probabilities (the
    specification's reading: kdflow's `nontarget_rank: paper`), still with the code's 1e-6."""
    n, c = s.shape
    lab = y.unsqueeze(1)
    s_y = _softmax(s).gather(1, lab)
    p_t = s_y**2
    p_t = (p_t + 1.0 - p_t.mean(0, keepdim=True)).detach()
    log_s = _log_softmax(s)
    log_s_y = log_s.gather(1, lab)
    loss_t = -(p_t * log_s_y).sum(1).mean()

    target = torch.zeros_like(s).scatter(1, lab, 0.9) + 0.1 / c
    loss_weak = -(mu * target * _log_softmax(w)).sum(1).mean()

    with torch.no_grad():
        w_p = _softmax(w)
        w_y = w_p.gather(1, lab)
        if rank_key == "official":
            key = w_p / (1 - w_y + 1e-6) + log_s / (1 - log_s_y + 1e-6)
        else:
            s_p = _softmax(s)
            key = w_p / (1 - w_y + 1e-6) + s_p / (1 - s_p.gather(1, lab) + 1e-6)
        order = torch.sort(key, dim=1, descending=True).indices
        position = torch.argsort(order, dim=1)  # 0-based rank of each class
        zipf = 1.0 / (position + 1).to(s.dtype)
        nz = _drop_target(zipf, y)
        nz = nz / nz.sum(1, keepdim=True)
    loss_non = -(nz * _log_softmax(_drop_target(s, y))).sum(1).mean()
    return {
        "ce": ce_weight * hard_ce(s, y),
        "uskd_target": alpha * loss_t,
        "uskd_non_target": beta * loss_non,
        "uskd_weak": loss_weak,
    }


# ----------------------------------------------------------------------------------------- #
# DHKD: BinaryKL, BinaryKLNorm, and the gradient alignment
# ----------------------------------------------------------------------------------------- #
def _torch_kldiv_pointwise(log_input: Tensor, target: Tensor) -> Tensor:
    return target * (target.log() - log_input)


def binary_kl_official(s: Tensor, t: Tensor, T: float = 2.0, eps: float = 1e-8) -> Tensor:
    """BinaryKL.forward (BinaryKL.py:13-20): clamped sigmoids, KLDivLoss(none) on both outcomes,
    summed / N * T^2."""
    t = t.detach()
    p = torch.sigmoid(s / T).clamp(eps, 1 - eps)
    q = torch.sigmoid(t / T).clamp(eps, 1 - eps)
    elem = _torch_kldiv_pointwise(p.log(), q) + _torch_kldiv_pointwise((1 - p).log(), 1 - q)
    return T**2 * elem.sum() / s.shape[0]


def binary_kl_norm_official(s: Tensor, t: Tensor, T: float = 2.0, eps: float = 1e-8) -> Tensor:
    """BinaryKLNorm.forward (BinaryKLNorm.py:13-19): d = clamp(sigmoid((s - t)/T)), KL of Bern(0.5)
    to Bern(d) elementwise, summed / N * T^2."""
    t = t.detach()
    d = torch.sigmoid((s - t) / T).clamp(eps, 1 - eps)
    half = torch.full_like(d, 0.5)
    elem = _torch_kldiv_pointwise(d.log(), half) + _torch_kldiv_pointwise((1 - d).log(), 1 - half)
    return T**2 * elem.sum() / s.shape[0]


def official_grad_align(objectives: list[Tensor], params: list[Tensor]) -> list[Tensor]:
    """OptimGradAlign.ga_backward (optimizer.py:33-60, 75-131): each objective's gradient
    flattened over every parameter (zeros where it does not reach), every copy (the first
    included) projected against the first's original when their dot is negative, with the
    dot and the norm over the whole vector, then all summed; returned per parameter."""
    flat = []
    for obj in objectives:
        grads = torch.autograd.grad(obj, params, retain_graph=True, allow_unused=True)
        flat.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]))
    g0 = flat[0]
    projected = []
    for g in flat:
        g = g.clone()
        dot = torch.dot(g, g0)
        if dot < 0:
            g = g - dot * g0 / g0.norm() ** 2
        projected.append(g)
    merged = torch.stack(projected).sum(0)
    out, i = [], 0
    for p in params:
        out.append(merged[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out


# ----------------------------------------------------------------------------------------- #
# ND (KD++ / DKD++)
# ----------------------------------------------------------------------------------------- #
def nd_official(e_s: Tensor, t_norm: Tensor, centers: Tensor, y: Tensor, factor: float) -> Tensor:
    """DirectNormLoss (utils.py:51-66), the loop over samples: 1 - <s, c/||c||> / max(||s||, ||t||),
    summed, times the factor, over N. The teacher's norm is a constant (no_grad)."""
    total = 0.0
    for s_i, tn, i in zip(e_s, t_norm.detach(), y.tolist()):
        center = centers[i].detach()
        e_c = center / center.pow(2).sum().sqrt()
        s_norm = s_i.pow(2).sum().sqrt()
        max_norm = s_norm if bool(s_norm >= tn) else tn
        total = total + (1 - torch.dot(s_i, e_c) / max_norm)
    return total * factor / len(y)


def nd_dkd_loss(s, t, y, alpha, beta, T):
    """ND's DKDLoss.dkd_loss (utils.py:97-121): mdistiller's arithmetic."""
    return mdistiller_dkd_loss(s, t, y, alpha, beta, T)


def kdpp_official(s, t, e_s, t_norm, centers, y, epoch_from_0, cls=1.0, kd=3.5, nd=2.0, T=4.0, warm_up=20.0):
    """train_cifar_kd.py:49-56 (resnet32x4 -> resnet8x4 line of train_cifar.sh: 1 cls, 3.5 kd, 2 nd);
    `epoch` is the loop variable of `range(start_epoch=0, epochs)` (line 170)."""
    return {
        "ce": cls * hard_ce(s, y),
        "kd": distill_kl_sum(s, t, T) * kd * min(1.0, epoch_from_0 / warm_up),
        "nd": nd_official(e_s, t_norm, centers, y, nd),
    }


def dkdpp_official(s, t, e_s, t_norm, centers, y, epoch_from_0, cls=1.0, alpha=2.0, beta=8.0, nd=0.5, T=4.0,
                   warm_up=20.0):
    """train_cifar_dkd.py:50-56 (train_cifar.sh: resnet32x4 -> resnet8x4, 2 tckd, 8 nckd, 0.5 nd)."""
    return {
        "ce": cls * hard_ce(s, y),
        "dkd": nd_dkd_loss(s, t, y, alpha, beta, T) * min(1.0, epoch_from_0 / warm_up),
        "nd": nd_official(e_s, t_norm, centers, y, nd),
    }


# ----------------------------------------------------------------------------------------- #
# TinyViT sparse KD
# ----------------------------------------------------------------------------------------- #
def tinyvit_sparse_kd(s: Tensor, topk_probs: Tensor, topk_indices: Tensor) -> Tensor:
    """main.py:325-330: the rest of the mass (1 - sum topK) / (C - K) everywhere, the top-K
    scattered in place (no clamp), then timm's SoftTargetCrossEntropy: mean_n sum_c -p log softmax(s)."""
    n, c = s.shape
    k = topk_probs.shape[1]
    minor = (1.0 - topk_probs.sum(-1, keepdim=True)) / (c - k)
    target = minor.repeat_interleave(c, dim=-1).scatter(-1, topk_indices.long(), topk_probs)
    return (-target * _log_softmax(s)).sum(-1).mean()


# ----------------------------------------------------------------------------------------- #
# MTARD
# ----------------------------------------------------------------------------------------- #
def mtard_kl(log_ps: Tensor, p_t: Tensor) -> Tensor:
    """kl_loss (resnet18_mtard_cifar10.py:56-58) then torch.mean (line 125-126): the mean over
    every element (batch AND classes) of p_t log(p_t + 1e-5) - p_t log p_s."""
    return (-log_ps * p_t + torch.log(p_t + 1e-5) * p_t).mean()


def mtard_kd(s: Tensor, teachers: Tensor, taus: Tensor, weights: list[float] | None = None) -> Tensor:
    """MTARD's total loss (line 169) over K teachers: sum_k w_k * kl_loss(log_softmax(s),
    softmax(t_k / tau_k)); the weights start at 1/K (lines 47-50)."""
    k = teachers.shape[0]
    weights = weights or [1.0 / k] * k
    log_ps = _log_softmax(s)
    return sum(w * mtard_kl(log_ps, _softmax(teachers[i].detach() / float(taus[i]))) for i, w in enumerate(weights))


# ----------------------------------------------------------------------------------------- #
# no official code: restated from the paper / specification
# ----------------------------------------------------------------------------------------- #
def pld_paper(s: Tensor, t: Tensor, y: Tensor, tau: float = 4.0) -> Tensor:
    """PLD (arXiv 2506.12542): pi = the label, then the other classes by teacher logit descending;
    a_k = softmax(t / tau)[pi_k]; L = mean_n sum_k a_k (log sum_{l >= k} exp s[pi_l] - s[pi_k]).
    Written as a loop over the ranks (no logcumsumexp)."""
    t = t.detach()
    n, c = s.shape
    rows = []
    for i in range(n):
        rest = [j for j in range(c) if j != int(y[i])]
        rest.sort(key=lambda j: (-float(t[i, j]), j))
        pi = [int(y[i])] + rest
        a = _softmax((t[i] / tau).unsqueeze(0))[0]
        total = 0.0
        for k in range(c):
            tail = s[i, pi[k:]]
            total = total + a[pi[k]] * (torch.logsumexp(tail, dim=0) - s[i, pi[k]])
        rows.append(total)
    return torch.stack(rows).mean()


def zloss_paper(o: Tensor, y: Tensor, a: float = 1.0, b: float = 5.0, std_eps: float = 0.0) -> Tensor:
    """Z-loss (de Brebisson & Vincent, arXiv 1604.08859): z = (o - mu) / sigma with the population
    sigma = sqrt(mean (o - mu)^2), L = mean_n softplus(a (b - z_y)) / a. The paper has no eps;
    `std_eps` adds one to sigma (kdflow's `std_eps` setting, default 1e-7)."""
    mu = o.mean(1, keepdim=True)
    sigma = ((o - mu) ** 2).mean(1, keepdim=True).sqrt() + std_eps
    z_y = ((o - mu) / sigma).gather(1, y.unsqueeze(1)).squeeze(1)
    x = a * (b - z_y)
    softplus = torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))
    return (softplus / a).mean()


def bdkd_documented(s, t, y, T=4.0, ce_weight=1.0, kd_weight=1.0, teacher_ce_weight=1.0, teacher_kd_weight=1.0):
    """BD-KD as docs/methods.md states kdflow's interpretation (no official code): r_n = (1 + g_n) / 2,
    g_n = (H(softmax(s_n)) - H(softmax(t_n))) / log C clipped to [-1, 1], at T = 1, constant;
    student: CE + T^2 mean_n((1 - r) KL(p_t||p_s) + r KL(p_s||p_t)), teacher detached;
    teacher: CE + T^2 mean_n KL(p_t||p_s), student detached."""
    c = s.shape[1]

    def entropy(z):
        p = _softmax(z)
        return -(p * _log_softmax(z)).sum(1)

    def kl(log_a, log_b):  # KL(a || b) per row
        return (log_a.exp() * (log_a - log_b)).sum(1)

    with torch.no_grad():
        g = ((entropy(s) - entropy(t)) / math.log(c)).clamp(-1, 1)
        r = (1 + g) / 2
    ls, lt = _log_softmax(s / T), _log_softmax(t.detach() / T)
    student = T**2 * ((1 - r) * kl(lt, ls) + r * kl(ls, lt)).mean()
    ls_c, lt_own = _log_softmax(s.detach() / T), _log_softmax(t / T)
    teacher = T**2 * kl(lt_own, ls_c).mean()
    return {
        "ce": ce_weight * hard_ce(s, y),
        "bdkd": kd_weight * student,
        "teacher_ce": teacher_ce_weight * hard_ce(t, y),
        "teacher_reverse_kl": teacher_kd_weight * teacher,
    }
