"""What the study's data can train, checked before any step runs: finite numbers, `logits.topk`
and each method's `min_classes` against the data set's class count, and the `prepare_data` entry
on bad data (exit 2, the file named, no traceback, nothing written)."""
from __future__ import annotations

import copy
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kdlib.config import ConfigError, load_config, parse_config
from kdlib.logit_cache import TeacherBatch
from kdlib.methods.base import method_class, method_names
from kdlib.models import build_model
from tests.helpers.data import cifar100_members, write_image, write_tar
from tests.helpers.methods import build
from tests.helpers.project import make_project, project_env
from tests.helpers.study import TINY_STUDY


def study(**changes) -> dict:
    """TINY_STUDY (digits: 10 classes; ce and kd; logits.topk 3) with `a__b=value` set as raw[a][b]."""
    raw = copy.deepcopy(TINY_STUDY)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    return raw


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "params.yaml")
    return str(err.value)


# --------------------------------------------------------------------------- #
# every float of a study is finite
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("methods: {kd: {temperature: .inf}}", "methods.kd.temperature"),
        ("methods: {kd: {kd_weight: .nan}}", "methods.kd.kd_weight"),
        ("methods: {kd: {ce_weight: -.inf}}", "methods.kd.ce_weight"),
        ("methods: {kd: {temperature: inf}}", "methods.kd.temperature"),  # a string pydantic would parse
        ("methods: {kd: {temperature: 1e400}}", "methods.kd.temperature"),  # YAML 1.1: a string, inf as a float
        ("students: {schedule: {lr: .inf}}", "students.schedule.lr"),
        ("teacher: {schedule: {weight_decay: .nan}}", "teacher.schedule.weight_decay"),
        ("data: {difficulty: .inf}", "data.difficulty"),
        ("finetuned_teachers: {ft: {lam: -.inf}}", "finetuned_teachers.ft.lam"),
    ],
)
def test_infinite_or_nan_settings_are_refused_naming_the_field(tmp_path: Path, yaml_text: str, field: str) -> None:
    """What YAML gives: `.inf`/`.nan` are floats (inf, nan); `inf` and `1e400` are strings
    pydantic would turn into inf. All are refused at validation, not in the first step."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "params.yaml", yaml.safe_load(yaml_text))
    assert f"{field}: Input should be a finite number" in str(err.value)


def test_finite_settings_still_validate() -> None:
    cfg = parse_config(study(methods={"ce": {}, "kd": {"temperature": 1e30, "kd_weight": 0.0}}))
    assert cfg.method_settings("kd").temperature == 1e30


# --------------------------------------------------------------------------- #
# the class count: logits.topk and each method's min_classes
# --------------------------------------------------------------------------- #
def test_topk_larger_than_the_class_count_is_refused() -> None:
    assert error_of(study(logits__topk=11)) == (
        "invalid study config params.yaml:\n"
        "  logits.topk: 11 is more than the 10 classes of data.source 'digits'; set logits.topk <= 10"
    )
    assert parse_config(study(logits__topk=10)).logits.topk == 10


THREE_CLASS_METHODS = {"dist", "dkd", "dkd++", "dkd+ls", "kd+ls", "nkd", "uskd", "zloss"}


def test_min_classes_of_every_method() -> None:
    """2 for all (1 class: every loss is constant); 3 where a term vanishes at 2 classes
    (`test_the_terms_of_three_class_methods_are_blind_at_two_classes`)."""
    needs = {name: method_class(name).min_classes for name in method_names()}
    assert {name for name, k in needs.items() if k == 3} == THREE_CLASS_METHODS
    assert set(needs.values()) == {2, 3}


def image_folder(root: Path, classes: list[str]) -> None:
    for split in ("train", "test"):
        for k, cls in enumerate(classes):
            write_image(root / split / cls / "a.png", (8, 8), (40 * k, 0, 0))


def test_a_method_needing_more_classes_than_the_data_has(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "data" / "pets", ["cat", "dog"])
    data = {"source": "imagefolder", "path": "data/pets", "image_size": 8}
    two = study(data=data, logits__topk=2, students__methods=["ce", "kd", "dkd_t2"],
                methods={"ce": {}, "kd": {}, "dkd_t2": {"method": "dkd", "temperature": 2}})
    assert error_of(two).splitlines()[1] == (
        "  students.methods: 'dkd_t2' needs at least 3 classes; data.source 'imagefolder' (data.path data/pets) has 2"
    )
    two["students"]["methods"] = ["ce", "kd"]
    assert parse_config(two).data.input_shape() == (3, 8, 2)  # ce and kd learn from 2 classes
    image_folder(tmp_path / "data" / "pets", ["cat", "dog", "emu"])  # a third class folder: dkd can run
    two["students"]["methods"] = ["ce", "kd", "dkd_t2"]
    parse_config(two)
    two["logits"]["topk"] = 4
    assert "logits.topk: 4 is more than the 3 classes of data.source 'imagefolder' (data.path data/pets)" in error_of(two)


def test_an_image_folder_is_checked_at_validation_from_its_listing(tmp_path: Path, monkeypatch) -> None:
    """One class, no test/, classes of train/ and test/ that differ: refused with the config,
    before any step runs (the folders are listed; no image is read)."""
    monkeypatch.chdir(tmp_path)
    data = {"source": "imagefolder", "path": "data/pets", "image_size": 8}
    image_folder(tmp_path / "data" / "pets", ["cat"])
    assert error_of(study(data=data)).splitlines()[1] == (
        "  data.path data/pets: train/ has 1 class folder (cat); a classification data set needs at least 2"
    )
    image_folder(tmp_path / "data" / "pets", ["cat", "dog"])
    (tmp_path / "data/pets/test/dog/a.png").unlink()
    (tmp_path / "data/pets/test/dog").rename(tmp_path / "data/pets/test/horse")
    assert error_of(study(data=data, logits__topk=2)).splitlines()[1] == (
        "  data.path data/pets: test/ must have the same class folders as train/; missing from test/: ['dog'], "
        "not in train/: ['horse']"
    )


# --------------------------------------------------------------------------- #
# min_classes is the losses' own: below it a term is blind, at it every term learns
# --------------------------------------------------------------------------- #
def _blind_terms():
    from kdlib.losses.dist import dist_loss
    from kdlib.losses.dkd import dkd_loss
    from kdlib.losses.logit_standardization import logit_standardize
    from kdlib.losses.nkd import nkd_loss
    from kdlib.losses.uskd import uskd_terms
    from kdlib.losses.zloss import z_loss

    return {
        "dkd's NCKD": lambda s, t, y: dkd_loss(s, t, y, alpha=0.0, beta=8.0, temperature=4.0),
        "nkd's L_non": lambda s, t, y: nkd_loss(s, t, y, 3.0, 3.5) - nkd_loss(s, t, y, 3.0, 0.0),
        "uskd's L_non": lambda s, t, y: uskd_terms(s, t, y)[1],
        "dist's inter-class term": lambda s, t, y: dist_loss(s, t, beta=1.0, gamma=0.0, temperature=4.0),
        "logit standardization": lambda s, t, y: logit_standardize(s),
        "zloss": lambda s, t, y: z_loss(s, y, a=1.0, b=5.0),
    }


@pytest.mark.parametrize("term", sorted(_blind_terms()))
def test_the_terms_of_three_class_methods_are_blind_at_two_classes(term: str) -> None:
    """Raising each row's largest student logit keeps the order of 2 logits, and a term over the
    non-target classes alone, a row z-score or a Pearson correlation across 2 classes cannot see
    it: the term gives the same value, so it has no gradient. With 3 classes it can."""
    f = _blind_terms()[term]
    g = torch.Generator().manual_seed(0)
    for classes, blind in ((2, True), (3, False)):
        s = torch.randn(16, classes, generator=g, dtype=torch.float64)
        t = torch.randn(16, classes, generator=g, dtype=torch.float64) * 3
        y = torch.randint(0, classes, (16,), generator=g)
        moved = s + torch.zeros_like(s).scatter_(1, s.argmax(1, keepdim=True), 1.5)
        same = torch.allclose(f(s, t, y), f(moved, t, y), atol=1e-6)
        assert same == blind, (term, classes)


def _method_terms(name: str, classes: int) -> dict[str, float]:
    """The gradient (sum of |grad| over the trained module) of each term of `name` on a
    `classes`-class batch, the method built as a study builds it."""
    torch.manual_seed(0)
    settings = {"teachers": ["teacher", "second"]} if name == "multi_teacher_kd" else {}
    method = build(name, settings)
    student = build_model("mlp", classes, 1, 8)
    if method.online_teacher:
        model = method.build(student, build_model("mlp", classes, 1, 8))
    elif "feature_norms" in method.cached:
        model = method.build(student, 16)
    else:
        model = method.build(student)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, classes, (8,))
    logits = torch.randn(8, classes) * 3
    if name == "multi_teacher_kd":
        teacher = torch.stack([logits, logits.flip(1)])
    elif method.cached == ("logits",):
        teacher = logits
    else:
        probs, idx = logits.softmax(1).topk(min(3, classes), dim=1)
        teacher = TeacherBatch(logits=logits, feature_norms=torch.rand(8) * 5 + 0.5,
                               class_means=torch.randn(classes, 16), topk_probs=probs, topk_indices=idx)
    _, terms = method.forward_train(model, x, y, teacher, epoch=100)  # past every warmup ramp
    grads = {}
    for term, value in terms.items():
        model.zero_grad()
        value.backward(retain_graph=True)
        grads[term] = sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)
    return grads


@pytest.mark.parametrize("name", method_names())
def test_every_term_learns_at_the_methods_min_classes(name: str) -> None:
    grads = _method_terms(name, method_class(name).min_classes)
    assert grads and all(g > 1e-3 for g in grads.values()), grads


# --------------------------------------------------------------------------- #
# `python -m tasks.prepare_data` on bad data: exit 2, the file named, no traceback
# --------------------------------------------------------------------------- #
def test_prepare_data_on_bad_data_exits_2_naming_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "project"
    dest.mkdir()
    raw = study(data={"source": "imagefolder", "path": "data/myset", "image_size": 8}, logits__topk=2)
    make_project(dest, raw)
    env = project_env(dest)
    image_folder(dest / "data" / "myset", ["cat", "dog"])
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(png, format="PNG")
    bad_image = dest / "data/myset/test/cat/3.png"

    def prepare(params: str, data: dict | None = None) -> subprocess.CompletedProcess:
        study_file = dest / params
        study_file.write_text(yaml.safe_dump({**raw, "data": data or raw["data"]}))
        return subprocess.run([sys.executable, "-m", "tasks.prepare_data", "--params", params], cwd=dest, env=env,
                              capture_output=True, text=True, timeout=300)

    cases = []
    bad_image.write_bytes(png.getvalue()[:300])  # a PNG cut short: found while reading
    cases.append(("bad.yaml", None, "cannot build the data set of bad.yaml:\n"
                  "  data.path data/myset: test/cat/3.png is not a readable image (image file is truncated)"))
    (dest / "data/cifar-100-python.tar.gz").write_bytes(
        write_tar(tmp_path / "c.tar.gz", cifar100_members()).read_bytes()[:3000])
    cases.append(("cifar.yaml", {"source": "cifar100", "path": "data/cifar-100-python.tar.gz", "md5_check": False},
                  "cannot build the data set of cifar.yaml:\n  data.path data/cifar-100-python.tar.gz: truncated archive ("))
    cases.append(("nolist.yaml", {"source": "imagefolder", "path": "data", "image_size": 8},  # found at validation
                  "invalid study config nolist.yaml:\n  data.path data: no train/ folder"))
    for params, data, expected in cases:
        result = prepare(params, data)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(expected), result.stderr
        assert "Traceback" not in result.stderr
        assert not (dest / "artifacts").exists()  # nothing written: the data set is built first

    bad_image.write_bytes(png.getvalue())  # fixed: the same command builds it
    result = prepare("bad.yaml")
    assert result.returncode == 0, result.stderr
    assert (dest / "artifacts/data/dataset.pt").is_file()
