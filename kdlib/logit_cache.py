"""The teacher's logits, computed once per (epoch, sample) view and replayed by every student.

A student's view of sample i in epoch e is `augment(x[i], augment.seed, e, i)`, a pure
function, so the cache can hold the teacher's logits for exactly those views. Students of
every method and seed then read the cache instead of running the teacher: the logits
they see are the ones a live teacher would produce on the same views (fp16 rounding
aside). The un-augmented train and test logits are cached too, for evaluation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from kdlib import artifacts
from kdlib.config import AugmentConfig
from kdlib.data import Dataset, augment, to_float
from kdlib.train import predict

VIEWS, PLAIN = "views.pt", "plain.pt"


@torch.no_grad()
def teacher_view_logits(
    teacher: nn.Module, ds: Dataset, augment_config: AugmentConfig, epoch: int, indices: Tensor
) -> Tensor:
    """The live teacher's logits on the students' views (eval mode, float32)."""
    teacher.eval()
    device = next(teacher.parameters()).device
    views = augment(ds.x_train[indices].to(device), augment_config.seed, epoch, indices, augment_config.padding, augment_config.flip)
    return teacher(to_float(views, ds.mean, ds.std))[0].float().cpu()


def compute_cache(
    teacher: nn.Module,
    ds: Dataset,
    augment_config: AugmentConfig,
    epochs: int,
    batch_size: int = 500,
    log: Callable[[str], None] = print,
) -> dict[str, Tensor]:
    """Dense fp16 logits: views (epochs, N, C), train (N, C) and test (M, C)."""
    n = len(ds.x_train)
    views = torch.empty(epochs, n, ds.num_classes, dtype=torch.float16)
    for epoch in range(epochs):
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            views[epoch, idx] = teacher_view_logits(teacher, ds, augment_config, epoch, idx).half()
        log(f"cache_logits epoch {epoch + 1}/{epochs}: {n} views")
    return {
        "views": views,
        "train": predict(teacher, ds.x_train, ds, batch_size).half(),
        "test": predict(teacher, ds.x_test, ds, batch_size).half(),
    }


def write_cache(out_dir: Path, cache: dict[str, Tensor]) -> dict[str, Any]:
    """Write the tensors atomically; returns the manifest metadata (shapes, dtype)."""
    out_dir = Path(out_dir)
    artifacts.save_tensors(out_dir / VIEWS, {"views": cache["views"]})
    artifacts.save_tensors(out_dir / PLAIN, {"train": cache["train"], "test": cache["test"]})
    return {
        "dtype": str(cache["views"].dtype).removeprefix("torch."),
        "shapes": {k: list(v.shape) for k, v in cache.items()},
    }


class LogitCache:
    """Read side: checks the manifest's hashes, then serves teacher logits as float32."""

    def __init__(self, out_dir: Path) -> None:
        self.manifest = artifacts.read_manifest(Path(out_dir), verify=True)
        self._views = artifacts.load_tensors(Path(out_dir) / VIEWS)["views"]
        plain = artifacts.load_tensors(Path(out_dir) / PLAIN)
        self.train, self.test = plain["train"].float(), plain["test"].float()

    @property
    def epochs(self) -> int:
        return self._views.shape[0]

    def views(self, epoch: int, indices: Tensor) -> Tensor:
        if epoch >= self.epochs:
            raise ValueError(f"the logit cache holds {self.epochs} epochs of views; epoch {epoch + 1} was asked for")
        return self._views[epoch, indices.cpu()].float()
