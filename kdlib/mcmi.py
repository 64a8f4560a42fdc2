"""MCMI teacher fine-tuning (Ye et al., "Bayes Conditional Distribution Estimation for
Knowledge Distillation Based on Conditional Mutual Information", ICLR 2024).

The trained teacher is fine-tuned with ``CE + lam * KL(P_x || Q_y)``: ``P_x`` its softmax
on a view, ``Q_y`` the centroid of class y (the mean of ``P_x`` over the training samples
of class y). ``lam < 0`` maximises the KL, i.e. the teacher's conditional mutual
information, so the teacher keeps more of each image's context in its soft prediction.

Centroids: recomputed at the start of every epoch from the teacher as it is then (eval
mode, the un-augmented training images), constant within the epoch. The authors'
CIFAR-100 script computes them once, before fine-tuning (train-mode batch statistics, on
augmented views), and leaves its per-batch EMA update (`Centroid.update_batch`) commented
out; refreshing per epoch keeps ``Q_y`` the centroids of the teacher being trained as it
moves over 20 epochs, at the cost of one inference pass per epoch, and is resume-safe (a
function of the weights at the epoch's start). ``regularizer: none`` is the CE-only
fine-tune of the same schedule, the control.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from kdlib.data.dataset import Dataset
from kdlib.objective import Objective, cross_entropy
from kdlib.train import predict


def class_centroids(logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``Q_c = mean of softmax(z) over the samples of class c``, (C, C) float32 rows of
    probabilities (accumulated in float64). A class with no sample gets the uniform row:
    no target selects it, and its log stays finite."""
    probs = torch.softmax(logits.double(), dim=1)
    sums = torch.zeros(num_classes, probs.shape[1], dtype=torch.float64).index_add_(0, target.long(), probs)
    counts = torch.bincount(target.long(), minlength=num_classes).double()[:, None]
    uniform = torch.full_like(sums, 1.0 / probs.shape[1])
    return torch.where(counts > 0, sums / counts.clamp_min(1), uniform).float()


def _check_matrix(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2 or 0 in x.shape:
        raise ValueError(f"{name} must be a non-empty floating-point tensor of shape (N, C), got {getattr(x, 'shape', x)}")


def mcmi_regularizer(teacher_logits: Tensor, target: Tensor, centroids: Tensor) -> Tensor:
    """MCMI teacher regulariser: ``batch_mean KL(P_x || Q_y)``.

    The conditional-mutual-information term of MCMI teacher fine-tuning,
    ``CE + lambda * KL`` with ``lambda < 0`` (maximise it). ``P_x = softmax(teacher_logits)``
    keeps its gradient (this is the teacher being trained); ``centroids`` is the
    ``(C, C)`` matrix of class centroids ``Q_c`` (mean teacher softmax over class
    c, rows of probabilities), a constant here. ``log P`` comes from
    ``log_softmax``; ``log Q`` is taken from the given strictly-positive
    centroids (a mean of softmaxes is never 0). Computed in float32 at least (float64
    stays float64); bad inputs raise ``ValueError`` naming the argument. The teacher's
    own loss, not a distillation loss: it lives here, apart from ``kdlib.losses``.
    """
    _check_matrix(teacher_logits, "teacher_logits")
    n, c = teacher_logits.shape
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool \
            or target.shape != (n,):
        raise ValueError(f"target must be an integer tensor of shape ({n},), got {getattr(target, 'dtype', target)} "
                         f"of shape {tuple(getattr(target, 'shape', ()))}")
    _check_matrix(centroids, "centroids")
    if centroids.shape != (c, c):
        raise ValueError(f"centroids must have shape ({c}, {c}), got shape {tuple(centroids.shape)}")
    dt = torch.float64 if torch.float64 in (teacher_logits.dtype, centroids.dtype) else torch.float32
    log_p = F.log_softmax(teacher_logits.to(dt), dim=1)
    q = centroids.detach().to(device=teacher_logits.device, dtype=dt)
    log_q = torch.log(q).index_select(0, target.long().to(teacher_logits.device))
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


class FinetuneSettings(BaseModel):
    """A fine-tune's objective: `regularizer: mcmi` (CE + lam * KL) or `none` (CE alone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    regularizer: Literal["mcmi", "none"] = "mcmi"
    lam: float = Field(-0.25, lt=0)


class MCMIFinetune(Objective):
    """The fine-tuning objective as a `fit` objective: terms `ce` and `mcmi` (= lam * KL,
    negative); centroids refreshed by `start_epoch` from `ds`'s training images."""

    name = "mcmi_finetune"

    def __init__(self, settings: FinetuneSettings, ds: Dataset) -> None:
        self.settings = settings
        self.ds = ds
        self.centroids: Tensor | None = None

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        if self.settings.regularizer == "mcmi":
            self.centroids = class_centroids(predict(model, self.ds.x_train, self.ds), self.ds.y_train, self.ds.num_classes)

    def forward_train(self, model, x, target, teacher, epoch):
        logits, _ = model(x)
        terms = {"ce": cross_entropy(logits, target)}
        if self.settings.regularizer == "mcmi":
            if self.centroids is None:
                raise RuntimeError("MCMI centroids are computed by start_epoch, which fit calls before each epoch")
            terms["mcmi"] = self.settings.lam * mcmi_regularizer(logits, target, self.centroids.to(logits.device))
        return logits, terms
