"""Sparse KD (TinyViT): KD from the teacher's cached top-K probabilities only."""
from __future__ import annotations

from pydantic import Field

from kdlib.losses import ce, sparse_kd
from kdlib.methods.base import Method, MethodSettings, register


class SparseKDSettings(MethodSettings):
    ce_weight: float = Field(0.1, ge=0, description="as KD's; TinyViT itself uses 0")
    kd_weight: float = Field(0.9, ge=0)


@register
class SparseKD(Method):
    """KD from TinyViT's sparse cache only: ce_weight * CE + kd_weight * soft-target CE
    against the reconstruction (top-K teacher probabilities in place, the rest of the mass
    spread evenly), `kdlib.losses.sparse_kd.sparse_kd_loss`.

    No temperature: the cache holds the teacher's probabilities at T = 1 (as TinyViT), and
    softening them needs the tail the cache dropped, so the student's logits are not scaled
    either (T = 1 on both sides, hence no T^2 factor)."""

    name = "sparse_kd"
    Settings = SparseKDSettings
    cached = ("topk_probs", "topk_indices")

    def kernels(self):
        from kdlib.kernels import sparse_kd as sparse_kd_kernels

        return {sparse_kd.sparse_kd_loss: sparse_kd_kernels.sparse_kd_loss}

    def forward_train(self, model, x, target, teacher, epoch):
        s = self.settings
        logits, _ = model(x)
        return logits, {
            "ce": s.ce_weight * ce.cross_entropy(logits, target),
            "sparse_kd": s.kd_weight * self.loss(sparse_kd.sparse_kd_loss)(logits, teacher.topk_probs, teacher.topk_indices),
        }
