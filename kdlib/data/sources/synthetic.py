"""``synthetic``: a generated image problem with CIFAR-100's *structure*.

100 fine classes in 20 superclasses of 5, 3 channels, where fine classes of one
superclass are visibly more confusable with each other than with the rest. That
structure is what gives a teacher's soft labels "dark knowledge" worth distilling,
so KD effects show up at toy scale, offline and cheap enough for a 2-core CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlib.data.dataset import Dataset, channel_stats
from kdlib.data.sources.base import DataSettings, Source

# Generator constants, tuned so that at image_size 8
# with 40 train images per class, a 20-epoch resnet20 teacher clearly beats an
# 8-epoch resnet8 student (~74-76% vs ~53-56% test top-1, 4 runs) and Hinton KD
# (T=4) lifts the student by ~3 points on average (+1 to +4). Fine-class patterns carry more spatial detail than
# superclass prototypes, which is what rewards the teacher's extra capacity;
# nuisance is mostly learnable (geometry, contrast) rather than destructive.
_SUPER_AMP = 1.0  # superclass prototype amplitude (shared by its fine classes)
_SUPER_GRID = 4  # degrees of freedom per axis of a superclass texture
_CLASS_AMP = 0.4  # fine-class pattern amplitude (what separates siblings)
_CLASS_GRID = 5  # degrees of freedom per axis of a fine-class pattern
_SHIFT = 0.2  # max translation, as a fraction of the image width
_WARP = 0.12  # smooth deformation amplitude, in normalised coordinates
_CONTRAST = 0.25  # log-std of the multiplicative contrast jitter
_BRIGHT = 0.25  # std of the additive per-channel brightness jitter
_CLUTTER = 0.2  # amplitude of a per-sample smooth background pattern
_NOISE = 0.06  # std of i.i.d. pixel noise
DEFAULT_DIFFICULTY = 1.0


def _smooth(gen: torch.Generator, n: int, c: int, grid: int, size: int) -> Tensor:
    """Random field with ~``grid`` degrees of freedom per axis, upsampled to ``size``.

    The grid is fixed in *image-relative* units, so the same problem is posed at
    8, 16 or 32 pixels; only the sampling resolution changes.
    """
    low = torch.randn(n, c, grid, grid, generator=gen)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)


def make_synthetic(
    seed: int,
    num_train_per_class: int,
    num_test_per_class: int,
    image_size: int,
    num_classes: int = 100,
    num_superclasses: int = 20,
    difficulty: float = DEFAULT_DIFFICULTY,
) -> Dataset:
    """Generate a CIFAR-100-shaped problem: fine classes nested in superclasses.

    Each superclass has a smooth colour/texture prototype; each fine class adds
    a weaker, finer-grained class-specific pattern, so siblings share most of
    their appearance and are confused with each other far more than with others. Every sample is its class template under a random translation,
    smooth deformation, contrast/brightness jitter, a smooth clutter pattern and
    pixel noise; ``difficulty`` scales all of these nuisances together.
    Deterministic from ``seed`` (a private ``torch.Generator``), balanced, with
    the train order shuffled deterministically.
    """
    if num_classes % num_superclasses:
        raise ValueError(
            f"num_classes ({num_classes}) must be a multiple of num_superclasses "
            f"({num_superclasses})"
        )
    if num_train_per_class < 1 or num_test_per_class < 0:
        raise ValueError("need num_train_per_class >= 1 and num_test_per_class >= 0")
    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    if difficulty < 0:
        raise ValueError(f"difficulty must be >= 0, got {difficulty}")

    gen = torch.Generator().manual_seed(int(seed))
    size, channels = image_size, 3
    per_super = num_classes // num_superclasses
    coarse = torch.arange(num_classes, dtype=torch.int64) // per_super

    # Class templates: superclass colour + smooth texture, plus a fine-class pattern.
    super_colour = torch.randn(num_superclasses, channels, 1, 1, generator=gen)
    super_texture = _smooth(gen, num_superclasses, channels, _SUPER_GRID, size)
    super_proto = _SUPER_AMP * (0.6 * super_colour + super_texture)
    class_pattern = _CLASS_AMP * _smooth(gen, num_classes, channels, _CLASS_GRID, size)
    templates = super_proto[coarse] + class_pattern  # (K, C, S, S)

    per_class = num_train_per_class + num_test_per_class
    n = num_classes * per_class
    labels = torch.arange(num_classes, dtype=torch.int64).repeat_interleave(per_class)
    d = float(difficulty)

    # Geometric nuisance: translation + smooth warp, applied with one grid_sample.
    # Reflection padding keeps shifted-in content natural rather than flat.
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    base_grid = torch.stack((gx, gy), dim=-1).expand(n, size, size, 2)
    shift = (torch.rand(n, 1, 1, 2, generator=gen) * 2 - 1) * (2 * _SHIFT * d)
    warp = _smooth(gen, n, 2, 3, size).permute(0, 2, 3, 1) * (_WARP * d)
    grid = base_grid + shift + warp
    x = F.grid_sample(
        templates[labels], grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )

    # Photometric nuisance.
    contrast = torch.exp(torch.randn(n, 1, 1, 1, generator=gen) * (_CONTRAST * d))
    brightness = torch.randn(n, channels, 1, 1, generator=gen) * (_BRIGHT * d)
    clutter = _smooth(gen, n, channels, 3, size) * (_CLUTTER * d)
    noise = torch.randn(n, channels, size, size, generator=gen) * (_NOISE * d)
    x = x.mul_(contrast).add_(brightness).add_(clutter).add_(noise)  # in place: 32 px is big

    # Squash to [0, 1] smoothly (no hard clipping of the signal) and quantise.
    images = x.mul_(1.2).sigmoid_().mul_(255.0).round_().to(torch.uint8)

    # Balanced split inside each class, then a deterministic shuffle of each split.
    within = torch.arange(n) % per_class
    train_idx = torch.nonzero(within < num_train_per_class).squeeze(1)
    test_idx = torch.nonzero(within >= num_train_per_class).squeeze(1)
    train_idx = train_idx[torch.randperm(train_idx.numel(), generator=gen)]
    test_idx = test_idx[torch.randperm(test_idx.numel(), generator=gen)]

    x_train = images[train_idx].contiguous()
    mean, std = channel_stats(x_train)
    return Dataset(
        x_train=x_train,
        y_train=labels[train_idx].contiguous(),
        x_test=images[test_idx].contiguous(),
        y_test=labels[test_idx].contiguous(),
        num_classes=num_classes,
        coarse_of_class=coarse,
        mean=mean,
        std=std,
        name=f"synthetic-s{seed}-{image_size}px-d{difficulty:g}",
    )


class Synthetic(Source):
    """``make_synthetic`` at ``data.image_size``, 100 classes in 20 superclasses."""

    name = "synthetic"
    takes_image_size = True

    @classmethod
    def input_shape(cls, data: DataSettings) -> tuple[int, int, int]:
        return 3, data.image_size, 100

    @classmethod
    def build(cls, data: DataSettings) -> Dataset:
        return make_synthetic(
            data.seed, data.train_per_class, data.test_per_class, data.image_size, difficulty=data.difficulty
        )
