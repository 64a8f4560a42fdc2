"""The GPU recipes `studies/cifar100_dhkd*.yaml` (DHKD's official CIFAR-100 command, resnet32x4
teacher from a released checkpoint, four students): each passes the config check as it is,
holds the official command's settings, and trains for one epoch on CIFAR-format files
written here (one image per class and split, a random resnet32x4 saved as the releases are)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kdlib.config import load_config
from kdlib.models import build_model
from tasks import cache_logits, evaluate, prepare_data, train_student, train_teacher
from tests.helpers.data import py2_pickle, write_tar
from tests.helpers.official import official_state_dict

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "ShuffleV2": "studies/cifar100_dhkd.yaml",
    "resnet8x4": "studies/cifar100_dhkd_resnet8x4.yaml",
    "wrn_16_2": "studies/cifar100_dhkd_wrn_16_2.yaml",
    "vgg8": "studies/cifar100_dhkd_vgg8.yaml",
}
CHECKPOINT = "data/teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"


def cifar100_archive(path: Path, train_per_class: int = 1, test_per_class: int = 1) -> None:
    """An archive in the official CIFAR-100 layout: 100 fine classes in 20 coarse ones, random images."""
    rng = np.random.default_rng(0)

    def batch(per_class: int, label: bytes) -> dict:
        fine = [k for k in range(100) for _ in range(per_class)]
        return {
            b"filenames": [b"img%d.png" % i for i in range(len(fine))],
            b"batch_label": label,
            b"fine_labels": fine,
            b"coarse_labels": [k // 5 for k in fine],
            b"data": rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8),
        }

    meta = {b"fine_label_names": [b"f%d" % k for k in range(100)], b"coarse_label_names": [b"c%d" % k for k in range(20)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tar(path, {
        "cifar-100-python/train": py2_pickle(batch(train_per_class, b"training batch 1 of 1")),
        "cifar-100-python/test": py2_pickle(batch(test_per_class, b"testing batch 1 of 1")),
        "cifar-100-python/meta": py2_pickle(meta),
    })


def released_teacher(path: Path) -> None:
    """A random resnet32x4 for CIFAR-100 saved as CRD / mdistiller / DHKD release their teachers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with open(path, "wb") as fh:
        torch.save({"epoch": 240, "model": official_state_dict(build_model("resnet32x4", 100, 3, 32))}, fh)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu_recipes")
    cifar100_archive(root / "data/cifar-100-python.tar.gz")
    released_teacher(root / CHECKPOINT)
    return root


def test_the_four_recipes_are_one_study_but_for_the_student():
    raws = {arch: yaml.safe_load((ROOT / path).read_text()) for arch, path in RECIPES.items()}
    for arch, raw in raws.items():
        assert raw["students"]["arch"] == arch and raw["study"] == f"cifar100-dhkd-resnet32x4-{arch}"
        rest = {**raw, "study": None, "students": {**raw["students"], "arch": None}}
        base = raws["ShuffleV2"]
        assert rest == {**base, "study": None, "students": {**base["students"], "arch": None}}


@pytest.mark.parametrize("arch", RECIPES)
def test_each_recipe_passes_the_config_check_with_the_official_settings(arch, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    cfg = load_config(ROOT / RECIPES[arch])  # the file as it is: what `check_study --validate-only` runs
    assert (cfg.data.source, cfg.data.path, cfg.data.md5_check) == ("cifar100", "data/cifar-100-python.tar.gz", True)
    assert (cfg.augment.padding, cfg.augment.flip) == (4, True)
    assert (cfg.teacher.arch, cfg.teacher.checkpoint) == ("resnet32x4", CHECKPOINT)
    s = cfg.students.schedule
    assert (s.epochs, s.batch_size, s.lr, s.momentum, s.weight_decay) == (240, 64, 0.05, 0.9, 5e-4)
    assert (s.scheduler, s.milestones, s.gamma, s.warmup_epochs) == ("multistep", [150, 180, 210], 0.1, 0)
    assert s.lr_scale == (0.2 if arch == "ShuffleV2" else 1.0)  # train_student.py: lr x0.2 for ShuffleV2
    dhkd = cfg.method_settings("dhkd")
    assert (dhkd.ce_weight, dhkd.aux_weight, dhkd.aux_temperature, dhkd.aux_head, dhkd.grad_align) == (
        1.0, 1.0, 2.0, "nonlinear", "official"
    )
    assert "dhkd" in cfg.students.methods and len(cfg.students.seeds) >= 3


def test_each_recipe_trains_one_epoch_on_cifar_format_files(workdir, monkeypatch):
    """One epoch of `dhkd` for every student of the recipes (the teacher and its cache made once,
    shared through the store as in a real run of the four), then `evaluate`: one step of each
    student (100 images, batch 64), the resnet32x4 teacher's logits at 32x32 the largest part."""
    monkeypatch.chdir(workdir)
    overrides = {
        "data": {"md5_check": False},
        "students": {"seeds": [0], "schedule": {"epochs": 1, "milestones": []}},
        "evaluation": {"probe_size": 32, "nc_every": 0},
        "tracking": {"enabled": False},
        "runtime": {"device": "cpu", "threads": 1, "store": str(workdir / "store")},
    }
    teacher_keys = set()
    for arch, path in RECIPES.items():
        cfg = load_config(ROOT / path, overrides)
        data = prepare_data.cached(cfg)
        assert (data["meta"]["num_train"], data["meta"]["num_test"], data["meta"]["num_classes"]) == (100, 100, 100)
        teacher = train_teacher.cached(cfg, data)
        assert teacher["meta"]["made"] == "checkpoint"
        teacher_keys.add(teacher["key"])
        logits = cache_logits.cached(cfg, data, teacher)
        student = train_student.cached(cfg, "dhkd", 0, data, logits)
        assert "failed" not in student["meta"] and student["meta"]["arch"] == arch
        history = (Path(student["dir"]) / "history.json").read_text()
        assert '"loss/aux_binarykl_norm"' in history
        lr = yaml.safe_load(history)[0]["lr"]
        assert lr == pytest.approx(0.05 * (0.2 if arch == "ShuffleV2" else 1.0))
        result = evaluate.cached(cfg, data, logits, student)
        assert 0.0 <= result["meta"]["metrics"]["top1"] <= 100.0
    assert len(teacher_keys) == 1  # one teacher for the four studies
