"""A teacher and its views for the logit-cache tests: the cache is checked against the teacher run
by hand, never against the cache code's own output."""
from __future__ import annotations

import torch

from kdlib.config import AugmentConfig
from kdlib.data.augment import augment
from kdlib.data.dataset import to_float
from kdlib.models import build_model

AUG = AugmentConfig(padding=2, flip=True, seed=11)


def make_teacher(ds):
    torch.manual_seed(0)
    return build_model("resnet8", ds.num_classes, 3, ds.image_size).eval()


def live(teacher, ds, epoch, idx, aug=AUG):
    """The teacher run by hand on a student's views: (logits, feature), no cache code involved."""
    with torch.no_grad():
        x = augment(ds.x_train[idx], aug.seed, epoch, idx, aug.padding, aug.flip)
        return teacher.eval()(to_float(x, ds.mean, ds.std))
