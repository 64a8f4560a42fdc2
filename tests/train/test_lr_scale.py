"""`schedule.lr_scale`: the official per-arch learning-rate rule (`auto`) and an explicit factor."""
from __future__ import annotations

import copy
import math

import pytest

from kdlib.config import OFFICIAL_LR_SCALE, ConfigError, ScheduleConfig, parse_config
from kdlib.train import learning_rate
from tests.helpers.study import TINY_STUDY


def study(students: dict | None = None, teacher: dict | None = None) -> dict:
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"].update(students or {})
    raw["teacher"].update(teacher or {})
    return raw


def test_official_rule_is_dhkd_and_crds():
    # DHKD train_student.py: `if args.model_s in ['MobileNetV2', 'ShuffleV1', 'ShuffleV2']:
    # args.learning_rate = args.learning_rate * 0.2`; CRD sets 0.01 (= 0.2 x its 0.05 default)
    assert OFFICIAL_LR_SCALE == {"MobileNetV2": 0.2, "ShuffleV1": 0.2, "ShuffleV2": 0.2}


@pytest.mark.parametrize(("arch", "scale"), [("resnet8", 1.0), ("MobileNetV2", 0.2), ("ShuffleV1", 0.2), ("ShuffleV2", 0.2), ("vgg8", 1.0)])
def test_auto_is_the_default_for_students_and_teachers(arch, scale):
    cfg = parse_config(study(students={"arch": arch}, teacher={"arch": arch}))
    assert cfg.students.schedule.lr_scale == scale and cfg.teacher.schedule.lr_scale == scale
    explicit = study(students={"arch": arch}, teacher={"arch": arch})
    explicit["students"]["schedule"]["lr_scale"] = "auto"
    assert parse_config(explicit).students.schedule == cfg.students.schedule  # same key as the default


def test_an_explicit_factor_wins():
    raw = study(students={"arch": "ShuffleV2"})
    raw["students"]["schedule"]["lr_scale"] = 1.0
    assert parse_config(raw).students.schedule.lr_scale == 1.0
    raw["students"]["schedule"]["lr_scale"] = 0
    with pytest.raises(ConfigError, match="students.schedule.lr_scale: Input should be greater than 0"):
        parse_config(raw)
    raw["students"]["schedule"]["lr_scale"] = "half"
    with pytest.raises(ConfigError, match="students.schedule.lr_scale"):
        parse_config(raw)


def test_learning_rate_scales_every_phase():
    for scheduler, extra in (("cosine", {}), ("multistep", {"milestones": [2]})):
        plain = ScheduleConfig(epochs=4, lr=0.05, warmup_epochs=1, scheduler=scheduler, **extra)
        scaled = plain.model_copy(update={"lr_scale": 0.2})
        for epoch, step in ((0, 1), (1, 0), (2, 3), (3, 9)):
            assert math.isclose(learning_rate(scaled, epoch, step, 10), 0.2 * learning_rate(plain, epoch, step, 10))
    assert math.isclose(learning_rate(ScheduleConfig(epochs=2, lr=0.05, lr_scale=0.2), 0, 0, 10), 0.01)
