"""Every registered method runs through the pipeline's steps (train_student, evaluate) on a tiny study."""
import copy

import pytest

from kdlib import artifacts
from kdlib.config import parse_config
from kdlib.methods import METHODS
from tasks import cache_logits, evaluate, prepare_data, train_student, train_teacher
from tests.conftest import TINY_STUDY


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["methods"] = list(METHODS)
    raw["students"]["schedule"]["epochs"] = 1
    raw["methods"] = {}
    raw["tracking"]["enabled"] = False
    raw["runtime"]["store"] = str(root / "store")
    cfg = parse_config(raw)
    data = prepare_data.run(cfg, root / "data")
    teacher = train_teacher.run(cfg, data, root / "teacher")
    logits = cache_logits.run(cfg, data, teacher, root / "logits")
    return cfg, data, logits, root


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_and_evaluates(upstream, method):
    cfg, data, logits, root = upstream
    student = train_student.run(cfg, method, 0, data, logits, root / "students" / method)
    assert "failed" not in student["meta"], student["meta"].get("failed")
    assert artifacts.is_complete(root / "students" / method)
    metrics = evaluate.run(cfg, data, logits, student, root / "evaluations" / method)["meta"]["metrics"]
    assert metrics["method"] == method and 0.0 <= metrics["top1"] <= 100.0
    # the export is head 1 only: a strict load into the plain architecture raises if head 2 leaked in
    train_student.load_student(cfg, data, student)
