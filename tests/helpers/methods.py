"""Methods built the way a study builds them, on a tiny model and batch."""
from __future__ import annotations

import torch

from kdlib.logit_cache import TeacherBatch
from kdlib.methods.base import Method, build_method, validate_method_entry
from kdlib.models import build_model

ABLATION_METHODS = ["ce", "kd", "binarykl", "binarykl_norm", "ce+binarykl", "ce+binarykl_norm", "dhkd", "dhkd_kd", "dkd"]
"""The methods of DHKD's ablation table, with the CE baseline."""


def build(entry: str, raw: dict | None = None) -> Method:
    """The method of a `methods.<entry>` block given as a raw mapping (parsed, then built)."""
    return build_method(entry, validate_method_entry(entry, raw))


def setup(name, **settings):
    """(method, model, x, y, teacher logits): a 10-class mlp student as the method builds it."""
    torch.manual_seed(0)
    method = build(name, settings)
    model = method.build(build_model("mlp", 10, 1, 8))
    x = torch.randn(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    teacher = torch.randn(6, 10) * 3
    return method, model, x, y, teacher


def setup_cache_reader(name, student_arch="mlp", d=16, **settings):
    """(method, model in eval mode, x, y) for a method reading more of the cache than the
    logits: the model is built with the teacher's feature width `d` where it needs it."""
    torch.manual_seed(0)
    method = build(name, settings)
    student = build_model(student_arch, 10, 1, 8)
    model = method.build(student, d) if "feature_norms" in method.cached else method.build(student)
    x = torch.randn(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    return method, model.eval(), x, y


def teacher_batch(n=6, c=10, d=16, k=3, seed=1) -> TeacherBatch:
    """A cache record with every field: logits, feature norms, class means and the top-K."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 3
    probs, idx = logits.softmax(1).topk(k, dim=1)
    return TeacherBatch(
        logits=logits, feature_norms=torch.rand(n, generator=g) * 5 + 0.5,
        class_means=torch.randn(c, d, generator=g), topk_probs=probs, topk_indices=idx,
    )
