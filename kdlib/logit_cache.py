"""The teacher's logits, computed once per (epoch, sample) view and replayed by every student.

A student's view of sample i in epoch e is `augment(x[i], augment.seed, e, i)`, a pure
function, so the cache can hold the teacher's logits for exactly those views. Students of
every method and seed then read the cache instead of running the teacher: the logits
they see are the ones a live teacher would produce on the same views (fp16 rounding
aside). The un-augmented train and test logits are cached too, for evaluation.

Beside the dense logits the cache holds, in one pass of the teacher:
- `features.pt`: the norm of the teacher's penultimate feature per view (float32, the only
  part of the feature the ND loss of KD++/DKD++ reads) and the teacher's class means of
  that feature over the un-augmented train images (eval mode), `(C, D)` float32;
- `sparse.pt` when `logits.topk = K`: TinyViT's sparse cache, per view the augmentation
  seed (`kdlib.data.augment.view_seeds`) and the teacher's top-K probabilities at T = 1 (fp16
  values, int16 class indices when C <= 32767, else int32).
A method declares the cached tensors it reads (`Method.cached`, names of `TeacherBatch`
fields); `LogitCache.reader` serves exactly those, loading only the files they live in.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from kdlib import artifacts
from kdlib.config import AugmentConfig
from kdlib.data.augment import view_seeds
from kdlib.data.dataset import Dataset
from kdlib.train import predict

VIEWS, PLAIN, FEATURES, SPARSE = "views.pt", "plain.pt", "features.pt", "sparse.pt"
UNAUGMENTED = AugmentConfig(padding=0, flip=False)


@dataclasses.dataclass(frozen=True)
class TeacherBatch:
    """The cached teacher tensors of one batch of views; fields nobody asked for are None."""

    logits: Tensor | None = None  # (B, C) float32, dense cache
    feature_norms: Tensor | None = None  # (B,) float32: ||e_t||, the teacher's penultimate feature
    class_means: Tensor | None = None  # (C, D) float32: the same for every batch
    topk_probs: Tensor | None = None  # (B, K) float32: teacher softmax at T = 1, sparse cache
    topk_indices: Tensor | None = None  # (B, K) int64

    def to(self, device: torch.device | str) -> "TeacherBatch":
        return TeacherBatch(**{k: None if v is None else v.to(device) for k, v in self.fields().items()})

    def fields(self) -> dict[str, Tensor | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


CACHED = tuple(f.name for f in dataclasses.fields(TeacherBatch))
FILE_OF = {"logits": VIEWS, "feature_norms": FEATURES, "class_means": FEATURES, "topk_probs": SPARSE, "topk_indices": SPARSE}


def _check_fields(fields: tuple[str, ...]) -> None:
    unknown = set(fields) - set(CACHED)
    if unknown or not fields:
        raise ValueError(f"cached tensors {list(fields)}: unknown or none; the cache holds {', '.join(CACHED)}")


def topk_index_dtype(num_classes: int) -> torch.dtype:
    """int16 holds class indices up to 32767; beyond that int32 (TinyViT's choice)."""
    return torch.int16 if num_classes <= 32767 else torch.int32


@torch.no_grad()
def teacher_view_outputs(
    teacher: nn.Module, ds: Dataset, augment_config: AugmentConfig, epoch: int, indices: Tensor
) -> tuple[Tensor, Tensor]:
    """The live teacher's (logits, penultimate feature) on the students' views (eval mode, float32)."""
    teacher.eval()
    device = next(teacher.parameters()).device
    logits, feature = teacher(ds.train_inputs(ds.x_train[indices].to(device), augment_config, epoch, indices))
    return logits.float().cpu(), feature.float().cpu()


def teacher_view_logits(
    teacher: nn.Module, ds: Dataset, augment_config: AugmentConfig, epoch: int, indices: Tensor
) -> Tensor:
    """The live teacher's logits on the students' views (eval mode, float32)."""
    return teacher_view_outputs(teacher, ds, augment_config, epoch, indices)[0]


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean feature per class, `(C, D)` float32 (accumulated in float64); a class without
    samples gets a zero row (no training target ever selects it)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels.long(), features.double())
    counts = torch.bincount(labels.long(), minlength=num_classes).clamp_min(1)
    return (sums / counts[:, None]).float()


def _batches(n: int, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, n, batch_size):
        yield torch.arange(start, min(start + batch_size, n))


def compute_cache(
    teacher: nn.Module,
    ds: Dataset,
    augment_config: AugmentConfig,
    epochs: int,
    batch_size: int = 500,
    log: Callable[[str], None] = print,
    topk: int | None = None,
) -> dict[str, Tensor]:
    """Dense fp16 logits: views (epochs, N, C), train (N, C), test (M, C); the teacher's feature
    norms per view (epochs, N) and class means (C, D); with `topk`, the sparse cache
    seeds (epochs, N), topk_probs and topk_indices (epochs, N, K)."""
    n, c = len(ds.x_train), ds.num_classes
    if topk is not None and not 1 <= topk <= c:
        raise ValueError(f"logits.topk = {topk} must be between 1 and the number of classes ({c})")
    views = torch.empty(epochs, n, c, dtype=torch.float16)
    norms = torch.empty(epochs, n, dtype=torch.float32)
    if topk is not None:
        seeds = torch.empty(epochs, n, dtype=torch.int64)
        top_probs = torch.empty(epochs, n, topk, dtype=torch.float16)
        top_idx = torch.empty(epochs, n, topk, dtype=topk_index_dtype(c))
    for epoch in range(epochs):
        for idx in _batches(n, batch_size):
            logits, feature = teacher_view_outputs(teacher, ds, augment_config, epoch, idx)
            views[epoch, idx] = logits.half()
            norms[epoch, idx] = feature.norm(dim=1)
            if topk is not None:
                probs, classes = logits.softmax(dim=1).topk(topk, dim=1)
                seeds[epoch, idx] = view_seeds(augment_config.seed, epoch, idx)
                top_probs[epoch, idx] = probs.half()
                top_idx[epoch, idx] = classes.to(top_idx.dtype)
        log(f"cache_logits epoch {epoch + 1}/{epochs}: {n} views")
    plain = [teacher_view_outputs(teacher, ds, UNAUGMENTED, 0, idx) for idx in _batches(n, batch_size)]
    cache = {
        "views": views,
        "train": torch.cat([logits for logits, _ in plain]).half(),
        "test": predict(teacher, ds.x_test, ds, batch_size).half(),
        "feature_norms": norms,
        "class_means": class_means(torch.cat([f for _, f in plain]), ds.y_train, c),
    }
    if topk is not None:
        cache.update(seeds=seeds, topk_probs=top_probs, topk_indices=top_idx)
    return cache


def write_cache(out_dir: Path, cache: dict[str, Tensor]) -> dict[str, Any]:
    """Write the tensors atomically; returns the manifest metadata (shapes, dtype, topk)."""
    out_dir = Path(out_dir)
    artifacts.save_tensors(out_dir / VIEWS, {"views": cache["views"]})
    artifacts.save_tensors(out_dir / PLAIN, {"train": cache["train"], "test": cache["test"]})
    artifacts.save_tensors(out_dir / FEATURES, {k: cache[k] for k in ("feature_norms", "class_means")})
    topk = None
    if "topk_probs" in cache:
        artifacts.save_tensors(out_dir / SPARSE, {k: cache[k] for k in ("seeds", "topk_probs", "topk_indices")})
        topk = cache["topk_probs"].shape[-1]
    return {
        "dtype": str(cache["views"].dtype).removeprefix("torch."),
        "shapes": {k: list(v.shape) for k, v in cache.items()},
        "topk": topk,
    }


class LogitCache:
    """Read side: checks the manifest's hashes, then serves the cached teacher tensors as float32.

    Files are loaded on first use, so a student of the sparse cache never loads the dense one.
    """

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir)
        self.manifest = artifacts.read_manifest(self.dir, verify=True)
        self._files: dict[str, dict[str, Tensor]] = {}
        plain = self._load(PLAIN)
        self.train, self.test = plain["train"].float(), plain["test"].float()

    def _load(self, name: str) -> dict[str, Tensor]:
        if name not in self._files:
            if name not in self.manifest["files"]:
                raise ValueError(self._missing(name))
            self._files[name] = artifacts.load_tensors(self.dir / name)
        return self._files[name]

    def _missing(self, name: str) -> str:
        if name == FEATURES:
            return (f"the logit cache {self.dir} holds no teacher features ({FEATURES}): it was written by an "
                    "older cache_logits; re-run cache_logits for kd++ / dkd++")
        if name == SPARSE:
            return (f"the logit cache {self.dir} holds no sparse top-K cache ({SPARSE}): set logits.topk "
                    "in params.yaml and re-run cache_logits")
        return f"the logit cache {self.dir} has no {name}"

    @property
    def epochs(self) -> int:
        return self.manifest["meta"]["shapes"]["views"][0]

    @property
    def feature_dim(self) -> int:
        """Width D of the teacher's penultimate feature (what a student's projector maps to)."""
        return self._load(FEATURES)["class_means"].shape[1]

    def views(self, epoch: int, indices: Tensor) -> Tensor:
        """Dense teacher logits of these samples' views in `epoch`, float32."""
        return self.batch(epoch, indices, ("logits",)).logits

    def batch(self, epoch: int, indices: Tensor, fields: tuple[str, ...], augment_seed: int | None = None) -> TeacherBatch:
        """The cached tensors named by `fields` for these samples' views in `epoch`. With
        `augment_seed`, the sparse cache's stored view seeds must be the reader's own."""
        _check_fields(fields)
        if epoch >= self.epochs:
            raise ValueError(f"the logit cache holds {self.epochs} epochs of views; epoch {epoch + 1} was asked for")
        idx = indices.cpu()
        out: dict[str, Tensor] = {}
        if "logits" in fields:
            out["logits"] = self._load(VIEWS)["views"][epoch, idx].float()
        if "feature_norms" in fields:
            out["feature_norms"] = self._load(FEATURES)["feature_norms"][epoch, idx].float()
        if "class_means" in fields:
            out["class_means"] = self._load(FEATURES)["class_means"].float()
        if {"topk_probs", "topk_indices"} & set(fields):
            sparse = self._load(SPARSE)
            if augment_seed is not None and not torch.equal(sparse["seeds"][epoch, idx], view_seeds(augment_seed, epoch, idx)):
                raise ValueError(
                    f"the sparse cache {self.dir} was made from other views than the student's "
                    f"(augment.seed {augment_seed}, epoch {epoch + 1}): re-run cache_logits with this augment"
                )
            out["topk_probs"] = sparse["topk_probs"][epoch, idx].float()
            out["topk_indices"] = sparse["topk_indices"][epoch, idx].long()
        return TeacherBatch(**{k: v for k, v in out.items() if k in fields})

    def reader(self, fields: tuple[str, ...], augment_seed: int | None = None) -> Callable[[int, Tensor], Tensor | TeacherBatch]:
        """The `teacher_views(epoch, indices)` a student trains from: the dense logits tensor
        when `fields` is ("logits",) (every logit-only method), else a `TeacherBatch`."""
        _check_fields(fields)
        for name in {FILE_OF[f] for f in fields}:
            self._load(name)  # fail before training starts, naming what is missing
        if tuple(fields) == ("logits",):
            return self.views
        return lambda epoch, indices: self.batch(epoch, indices, fields, augment_seed)
