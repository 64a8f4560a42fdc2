"""Every registered method runs through the pipeline's steps (train_student, evaluate) on a tiny study."""
import copy

import pytest

from kdlib import artifacts
from kdlib.config import parse_config
from kdlib.methods.base import method_names
from tasks import cache_logits, evaluate, prepare_data, train_student, train_teacher
from tests.helpers.study import TINY_STUDY


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["methods"] = method_names()
    raw["students"]["schedule"]["epochs"] = 1
    # multi_teacher_kd reads the teacher and a second one, trained and cached like it
    raw["teachers"] = {"second": {"arch": "mlp", "seed": 1, "schedule": {"epochs": 1, "batch_size": 128, "lr": 0.05}}}
    raw["methods"] = {"multi_teacher_kd": {"teachers": ["teacher", "second"]}}
    raw["tracking"]["enabled"] = False
    raw["runtime"]["store"] = str(root / "store")
    cfg = parse_config(raw)
    data = prepare_data.run(cfg, root / "data")
    teachers = {name: train_teacher.run(cfg, data, root / "teachers" / name, name) for name in ("teacher", "second")}
    caches = {name: cache_logits.run(cfg, data, model, root / "logits" / name) for name, model in teachers.items()}
    return cfg, data, caches, root


@pytest.mark.parametrize("method", method_names())
def test_method_trains_and_evaluates(upstream, method):
    cfg, data, caches, root = upstream
    names = train_student.student_teachers(cfg, method) or ["teacher"]
    logits = caches[names[0]] if len(names) == 1 else [caches[name] for name in names]
    student = train_student.run(cfg, method, 0, data, logits, root / "students" / method)
    assert "failed" not in student["meta"], student["meta"].get("failed")
    assert artifacts.is_complete(root / "students" / method)
    metrics = evaluate.run(cfg, data, caches[names[0]], student, root / "evaluations" / method)["meta"]["metrics"]
    assert metrics["method"] == method and 0.0 <= metrics["top1"] <= 100.0
    # the export is head 1 only: a strict load into the plain architecture raises if head 2 leaked in
    train_student.load_student(cfg, data, student)
