"""The DHKD ablation studies (studies/dhkd_ablation*.yaml): valid, the nine arms, five or more
seeds, `dhkd` as its authors ran it (the registry's defaults) and its linear, unaligned variant."""
from __future__ import annotations

from pathlib import Path

import pytest

from kdlib.config import load_config
from kdlib.methods.base import validate_method_entry

ROOT = Path(__file__).resolve().parents[2]
ARMS = ["ce", "binarykl", "binarykl_norm", "ce+binarykl", "ce+binarykl_norm", "kd", "dhkd", "dhkd_linear", "dhkd_kd"]


@pytest.mark.parametrize("path", ["studies/dhkd_ablation.yaml", "studies/dhkd_ablation_digits.yaml"])
def test_ablation_study_runs_the_nine_arms_with_the_official_dhkd(path):
    cfg = load_config(ROOT / path)
    assert cfg.students.methods == ARMS and len(cfg.students.seeds) >= 5
    for name in ("dhkd", "dhkd_kd", "kd", "ce+binarykl_norm"):  # pinned settings are today's defaults
        assert cfg.method_settings(name) == validate_method_entry(name, None)
    linear = cfg.method_settings("dhkd_linear")
    assert (linear.method, linear.aux_head, linear.grad_align) == ("dhkd", "linear", "none")
    assert cfg.method_settings("dhkd").model_dump(exclude={"aux_head", "grad_align"}) == linear.model_dump(
        exclude={"aux_head", "grad_align"}
    )
    schedule = cfg.students.schedule  # the official schedule's shape: x0.1 at 5/8, 3/4, 7/8 of the epochs
    assert schedule.scheduler == "multistep"
    assert [m / schedule.epochs for m in schedule.milestones] == pytest.approx([0.625, 0.75, 0.875], abs=0.01)
    assert cfg.runtime.threads == 1


def test_digits_ablation_trains_on_a_subset():
    cfg = load_config(ROOT / "studies/dhkd_ablation_digits.yaml")
    assert (cfg.data.source, cfg.data.train_per_class, cfg.data.test_fraction) == ("digits", 10, 0.5)
