"""A diverging student stops with an error naming method, epoch and term; the study still finishes."""
import copy
import json

from kdlib import artifacts
from kdlib.config import parse_config
from tasks import aggregate, cache_logits, evaluate, prepare_data, train_student, train_teacher
from tests.helpers.study import TINY_STUDY


def test_failed_student_is_marked_not_dropped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["methods"] = ["ce", "kd_inf"]
    raw["methods"] = {"ce": {}, "kd_inf": {"method": "kd", "kd_weight": 1e39}}  # overflows fp32 at once
    raw["tracking"]["enabled"] = False
    cfg = parse_config(raw)

    data = prepare_data.run(cfg, tmp_path / "data")
    teacher = train_teacher.run(cfg, data, tmp_path / "teacher")
    logits = cache_logits.run(cfg, data, teacher, tmp_path / "logits")
    students = {m: train_student.run(cfg, m, 0, data, logits, tmp_path / m) for m in cfg.students.methods}

    error = students["kd_inf"]["meta"]["failed"]
    assert "kd_inf seed 0" in error and "['kd']" in error and "epoch 1" in error
    assert not (tmp_path / "kd_inf" / "model.pt").exists()
    assert artifacts.is_complete(tmp_path / "kd_inf")

    evaluations = [evaluate.run(cfg, data, logits, s, tmp_path / f"eval-{m}") for m, s in students.items()]
    aggregate.run(cfg, teacher, evaluations, tmp_path / "results")
    summary = json.loads((tmp_path / "results/summary.json").read_text())
    rows = {r["method"]: r for r in summary["methods"]}
    assert rows["kd_inf"]["failed"] == 1 and rows["kd_inf"]["seeds"] == 0 and rows["kd_inf"]["top1_mean"] is None
    assert rows["ce"]["failed"] == 0 and rows["ce"]["top1_mean"] > 0
    assert [r["method"] for r in summary["methods"]] == ["ce", "kd_inf"]
    markdown = (tmp_path / "results/summary.md").read_text()
    assert "0 (+1 failed)" in markdown and "kd_inf seed 0:" in markdown
