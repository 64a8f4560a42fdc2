"""Teacher and student networks for CIFAR-style knowledge distillation.

The architectures follow the CRD / mdistiller model zoo so that accuracies and
parameter counts are comparable with the published KD literature:

- CIFAR ResNets (He et al. 2016, Sec. 4.2): BasicBlock, 3 stages, depth 6n+2.
- Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation blocks, depth 6n+4.
- VGG8 / 11 / 13 / 16 / 19 with batch norm, as used in CRD and mdistiller.
- The zoo's ResNet50 (four stages of bottlenecks), MobileNetV2 (`mobile_half`), ShuffleV1,
  ShuffleV2, and MobileNetV1 (its ImageNet student), under the official names.
- A small MLP, as a deliberately weak student / sanity baseline.
- A small decoder-only transformer (`gpt.py`: `gpt_nano` ... `gpt_small`) for language
  models, listed in ``TOKEN_ARCHS``: it reads token ids, not images.

Parameter names are the official code's, except that every head is `classifier`
(`kdlib.models.checkpoint` loads the released teachers, mapping the official names).

Every model has the same contract, so the training code never special-cases an
architecture:

- constructor ``(num_classes, in_channels=3, image_size=32)``;
- ``model.feature_dim`` and ``model.classifier`` (an ``nn.Linear`` head);
- ``model(x) -> (logits, feature)`` with ``feature`` the pooled penultimate
  activation of shape (N, feature_dim) and ``logits == classifier(feature)``.

A token arch keeps the contract with *positions as rows*: ``num_classes`` is the
vocabulary size, ``image_size`` the context length, ``x`` is (B, T) token ids, and the
N rows of ``logits`` / ``feature`` are the B*T positions (batch-major), so every
(N, C) loss and method runs per token.

Feature-based KD losses read ``feature``; logit-based ones read ``logits``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from kdlib.models import gpt, mlp, mobilenet, resnet, shufflenet, vgg, wrn
from kdlib.models.heads import DualHead
from kdlib.models.layers import init_weights

# -----------------------------------------------------------------------------
# Named constructors and registry
#
# All share the signature (num_classes, in_channels=3, image_size=32) so callers
# can build any architecture from a config string. Each family lists its own.

ARCHS: dict[str, Callable[..., nn.Module]] = {
    **resnet.ARCHS, **wrn.ARCHS, **vgg.ARCHS, **mobilenet.ARCHS, **shufflenet.ARCHS, **mlp.ARCHS, **gpt.ARCHS
}

TOKEN_ARCHS: frozenset[str] = frozenset(gpt.ARCHS)
"""The archs that read (B, T) token ids (one row per position) instead of images."""


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (trainable or not), as reported in KD papers."""
    return sum(p.numel() for p in model.parameters())


def build_model(
    arch: str, num_classes: int, in_channels: int = 3, image_size: int = 32
) -> nn.Module:
    """Build a registered architecture by name (the string used in configs)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHS)}")
    return ARCHS[arch](num_classes, in_channels=in_channels, image_size=image_size)


@functools.lru_cache(maxsize=None)
def forward_error(
    arch: str, num_classes: int, in_channels: int, image_size: int, batch_size: int, aux_head: str | None = None
) -> str | None:
    """Why one training step of `arch` (with a DualHead of `aux_head`) cannot run on this
    shape, or None if it can.

    The model is built and run on the meta device in training mode: shapes and batch-norm
    batch checks are real, nothing is allocated, so config validation can afford it. A
    batch of 1 is probed when `batch_size` is 1 (batch norm refuses it), else 2. A token
    arch is probed with (batch, image_size) token ids: `image_size` is its context length.
    """
    try:
        with torch.device("meta"):
            model = build_model(arch, num_classes, in_channels, image_size)
            if aux_head is not None:
                model = DualHead(model, head=aux_head)
            batch = min(batch_size, 2)
            if arch in TOKEN_ARCHS:
                x = torch.zeros(batch, image_size, dtype=torch.long)
            else:
                x = torch.zeros(batch, in_channels, image_size, image_size)
            model.train()(x)
    except (RuntimeError, ValueError) as err:
        return str(err).splitlines()[0]
    return None


__all__ = ["ARCHS", "TOKEN_ARCHS", "build_model", "count_parameters", "forward_error", "init_weights"]
