"""Teachers not trained here: a released checkpoint (`teacher.checkpoint`) and the untrained random
initialisation (`teacher.untrained`), each the teacher step's output, keyed by what it is made
from; students started from the teacher's initialisation (`students.init_from_teacher`)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlib import artifacts
from kdlib.config import ConfigError, parse_config
from kdlib.models import build_model
from kdlib.models.init import initial_model, start_near
from tasks import aggregate, cache_logits, prepare_data, train_student, train_teacher
from tests.helpers.official import official_state_dict
from tests.helpers.study import TINY_STUDY

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (10, 1, 8)  # digits: 10 classes of 1x8x8 images


def study(teacher: dict, **students) -> dict:
    raw = copy.deepcopy(TINY_STUDY)
    raw["teacher"] = teacher
    raw["students"].update(students)
    raw["tracking"]["enabled"] = False
    return raw


def release(path: Path, arch: str = "resnet8", seed: int = 5) -> str:
    """A random-weight `arch` for digits, saved as CRD / mdistiller / DHKD release teachers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with open(path, "wb") as fh:  # through a handle: torch names the zip records after a path it is given
        torch.save({"epoch": 240, "model": official_state_dict(build_model(arch, *SHAPE))}, fh)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_released_teacher_is_the_teacher_steps_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    digest = release(tmp_path / "data/teachers/resnet8.pth")
    cfg = parse_config(study({"arch": "resnet8", "checkpoint": "data/teachers/resnet8.pth", "checkpoint_sha256": digest}))
    data = prepare_data.run(cfg, tmp_path / "data_artifact")
    teacher = train_teacher.run(cfg, data, tmp_path / "teacher")

    meta = teacher["meta"]
    assert meta["arch"] == "resnet8" and meta["made"] == "checkpoint" and meta["checkpoint_sha256"] == digest
    assert meta["best_epoch"] == 0 and meta["best_top1"] == meta["test"]["top1"] and {"nll", "ece"} <= meta["test"].keys()
    assert json.loads((tmp_path / "teacher/history.json").read_text()) == []
    loaded = train_teacher.load_teacher(cfg, data, teacher)
    torch.manual_seed(5)
    assert torch.equal(loaded.classifier.weight, build_model("resnet8", *SHAPE).classifier.weight)
    # read downstream like a trained teacher: its cache, and its row in the teachers table
    cache_logits.run(cfg, data, teacher, tmp_path / "logits")
    row = aggregate.teacher_rows(teacher, {})[0]
    assert (row["epochs"], row["best_epoch"], row["top1"]) == (0, 0, meta["test"]["top1"])


def test_released_teacher_is_keyed_by_content_not_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    release(tmp_path / "a.pth")
    release(tmp_path / "b.pth")  # the same bytes at another path
    data = {"files": {"dataset.pt": "d"}}
    key = lambda raw: train_teacher.key(parse_config(raw), data)  # noqa: E731
    base = study({"arch": "resnet8", "checkpoint": "a.pth"})
    moved = study({"arch": "resnet8", "checkpoint": "b.pth"})
    views = copy.deepcopy(base)
    views["augment"]["seed"] = 9  # nothing trains it: the augmentation is not part of it
    assert key(base) == key(moved) == key(views)
    release(tmp_path / "a.pth", seed=6)  # other weights at the same path
    assert key(base) != key(moved)


def test_damaged_or_unpinned_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    digest = release(tmp_path / "t.pth")
    cfg = parse_config(study({"arch": "resnet8", "checkpoint": "t.pth", "checkpoint_sha256": "f" * 64}))
    data = prepare_data.run(cfg, tmp_path / "data")
    with pytest.raises(ValueError, match=f"its sha256 is {digest}, not the expected f{{64}}"):
        train_teacher.run(cfg, data, tmp_path / "teacher")
    wrong_arch = parse_config(study({"arch": "wrn_16_1", "checkpoint": "t.pth"}))
    with pytest.raises(ValueError, match=r"does not fit a WideResNet: missing: .*block1\.0\.bn1\.weight"):
        train_teacher.run(wrong_arch, data, tmp_path / "teacher")


def test_a_truncated_checkpoint_stops_the_dvc_stage_with_exit_2(tmp_path):
    """`python -m tasks.train_teacher` (the DVC stage) exits 2 naming the field and the problem."""
    release(tmp_path / "data/t.pth")
    (tmp_path / "data/t.pth").write_bytes((tmp_path / "data/t.pth").read_bytes()[:4000])
    raw = study({"arch": "resnet8", "checkpoint": "data/t.pth"})
    raw["runtime"]["store"] = str(tmp_path / "store")
    (tmp_path / "params.yaml").write_text(json.dumps(raw))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        prepare_data.run(parse_config(raw), tmp_path / "artifacts/data")
    finally:
        os.chdir(cwd)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tasks.train_teacher"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "teacher.checkpoint: checkpoint data/t.pth: torch.load(weights_only=True) cannot read it" in done.stderr
    assert "Traceback" not in done.stderr


def test_untrained_teacher_is_its_seeds_initialisation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(study({"arch": "resnet8", "seed": 3, "untrained": True}))
    data = prepare_data.run(cfg, tmp_path / "data")
    teacher = train_teacher.run(cfg, data, tmp_path / "teacher")
    assert teacher["meta"]["made"] == "untrained" and teacher["meta"]["best_epoch"] == 0
    weights = artifacts.load_tensors(tmp_path / "teacher/model.pt")
    init = initial_model("resnet8", 3, *SHAPE).state_dict()
    assert weights.keys() == init.keys() and all(torch.equal(weights[k], init[k]) for k in init)
    key = lambda **teacher: train_teacher.key(parse_config(study({"arch": "resnet8", "untrained": True, **teacher})), data)  # noqa: E731
    assert key(seed=3) != key(seed=4)


def test_initial_model_is_what_a_seeded_run_starts_from_and_keeps_the_rng():
    torch.manual_seed(3)
    seeded = build_model("resnet8", *SHAPE).state_dict()
    torch.manual_seed(11)
    state = torch.get_rng_state()
    init = initial_model("resnet8", 3, *SHAPE).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(seeded[k], init[k]) for k in seeded)


def test_start_near_is_the_papers_neighbourhood_init():
    teacher, student = initial_model("resnet8", 0, *SHAPE), initial_model("resnet8", 1, *SHAPE)
    own = {k: v.clone() for k, v in student.named_parameters()}
    with torch.no_grad():
        teacher.bn1.running_mean.fill_(0.5)
    start_near(student, teacher, noise=0.1)
    for name, p in student.named_parameters():
        assert torch.allclose(p, dict(teacher.named_parameters())[name] + 0.1 * own[name])
    assert torch.equal(student.bn1.running_mean, teacher.bn1.running_mean)
    exact = initial_model("resnet8", 1, *SHAPE)
    start_near(exact, teacher, noise=0.0)
    assert all(torch.equal(a, b) for a, b in zip(exact.parameters(), teacher.parameters()))
    scaled = initial_model("resnet8", 1, *SHAPE)
    start_near(scaled, teacher, noise=2.0, variance_preserving=True)
    assert torch.allclose(scaled.conv1.weight, (teacher.conv1.weight + 2.0 * own["conv1.weight"]) / 5**0.5)
    with pytest.raises(ValueError, match="differ in parameters"):
        start_near(build_model("resnet14", *SHAPE), teacher, noise=0.0)


def test_student_starts_from_the_teachers_init_and_its_key_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = study({"arch": "mlp", "seed": 4, "untrained": True}, methods=["ce"], init_from_teacher={"noise": 0.0})
    raw["methods"] = {"ce": {}}
    cfg = parse_config(raw)
    data = prepare_data.run(cfg, tmp_path / "data")

    started = {}

    class Stop(Exception):
        pass

    def fit(model, *args, **kwargs):
        started.update({k: v.clone() for k, v in model.state_dict().items()})
        raise Stop

    monkeypatch.setattr(train_student, "fit", fit)
    with pytest.raises(Stop):
        train_student.run(cfg, "ce", 0, data, None, tmp_path / "student")
    init = initial_model("mlp", 4, *SHAPE).state_dict()
    assert all(torch.equal(started[k], init[k]) for k in init)

    key = lambda raw: train_student.key(parse_config(raw), "ce", 0, data, None)  # noqa: E731
    plain = copy.deepcopy(raw)
    del plain["students"]["init_from_teacher"]
    noisier, other_teacher = copy.deepcopy(raw), copy.deepcopy(raw)
    noisier["students"]["init_from_teacher"]["noise"] = 0.01
    other_teacher["teacher"]["seed"] = 5
    assert len({key(raw), key(plain), key(noisier), key(other_teacher)}) == 4
    assert train_student.config_slice(cfg, "ce", 0)["init_from_teacher"] == {
        "noise": 0.0, "variance_preserving": False, "teacher": {"arch": "mlp", "seed": 4}
    }


@pytest.mark.parametrize(
    "teacher, students, message",
    [
        ({"arch": "resnet8", "checkpoint": "t.pth", "untrained": True}, {}, "teacher: checkpoint and untrained: true are two teachers"),
        ({"arch": "resnet8", "untrained": True, "checkpoint_sha256": "0" * 64}, {}, "checkpoint_sha256 pins the content of `checkpoint`"),
        ({"arch": "resnet8", "checkpoint": "t.pth", "checkpoint_sha256": "abc"}, {}, "teacher.checkpoint_sha256: String should match pattern"),
        ({"arch": "resnet8", "untrained": True, "schedule": {"epochs": 1}}, {}, "this teacher is untrained, nothing trains it"),
        ({"arch": "resnet8", "checkpoint": "t.pth", "schedule": {"epochs": 1}}, {}, "loaded from `checkpoint`, nothing trains it"),
        ({"arch": "resnet8"}, {}, "teacher: schedule: required to train this teacher"),
        ({"arch": "resnet8", "checkpoint": "t.pth", "seed": 1}, {}, "teacher: seed: a teacher loaded from `checkpoint` has its weights"),
        ({"arch": "resnet8", "checkpoint": "missing.pth"}, {}, "teacher.checkpoint 'missing.pth' is not a file"),
        ({"arch": "resnet8", "checkpoint": "/etc/hostname"}, {}, "teacher.checkpoint '/etc/hostname' is outside the project and data.root"),
        ({"arch": "resnet8", "untrained": True}, {"init_from_teacher": {}},
         "students.init_from_teacher: students.arch 'mlp' must be teacher.arch 'resnet8'"),
        ({"arch": "mlp", "checkpoint": "t.pth"}, {"init_from_teacher": {}},
         "students.init_from_teacher: teacher.checkpoint is a released teacher whose initialisation is not known"),
        ({"arch": "mlp", "untrained": True}, {"init_from_teacher": {"noise": -1}}, "students.init_from_teacher.noise"),
    ],
)
def test_config_errors_name_the_field(teacher, students, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.pth").write_bytes(b"")
    with pytest.raises(ConfigError) as err:
        parse_config(study(teacher, **students))
    assert message in str(err.value)
