"""A diverging student stops with an error naming method, epoch and term; the study still finishes,
through the library and through `dvc repro`, with the failure marked in the table."""
import copy
import json

import pytest

from kdlib import artifacts
from kdlib.config import parse_config
from tasks import aggregate, cache_logits, evaluate, prepare_data, train_student, train_teacher
from tests.helpers.project import BIN, make_project, project_env, ran_stages, run
from tests.helpers.study import TINY_STUDY


def diverging_study() -> dict:
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["methods"] = ["ce", "kd_inf"]
    raw["methods"] = {"ce": {}, "kd_inf": {"method": "kd", "kd_weight": 1e39}}  # overflows fp32 at once
    raw["tracking"]["enabled"] = False
    return raw


def test_failed_student_is_marked_not_dropped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(diverging_study())

    data = prepare_data.run(cfg, tmp_path / "data")
    teacher = train_teacher.run(cfg, data, tmp_path / "teacher")
    logits = cache_logits.run(cfg, data, teacher, tmp_path / "logits")
    students = {m: train_student.run(cfg, m, 0, data, logits, tmp_path / m) for m in cfg.students.methods}

    error = students["kd_inf"]["meta"]["failed"]
    assert "kd_inf seed 0" in error and "['kd']" in error and "epoch 1" in error
    assert not (tmp_path / "kd_inf" / "model.pt").exists()
    assert artifacts.is_complete(tmp_path / "kd_inf")

    evaluations = [evaluate.run(cfg, data, logits, s, tmp_path / f"eval-{m}") for m, s in students.items()]
    # a failed student's evaluation has every output of its DVC stage, the failure marked in each
    failed = tmp_path / "eval-kd_inf"
    assert sorted(evaluations[1]["files"]) == ["metrics.json", "reliability.json"] and artifacts.is_complete(failed)
    assert json.loads((failed / "metrics.json").read_text())["failed"] == error
    diagram = json.loads((failed / "reliability.json").read_text())
    assert diagram["failed"] == error and diagram["count"] == [0.0] * cfg.evaluation.ece_bins
    aggregate.run(cfg, teacher, evaluations, tmp_path / "results")
    summary = json.loads((tmp_path / "results/summary.json").read_text())
    rows = {r["method"]: r for r in summary["methods"]}
    assert rows["kd_inf"]["failed"] == 1 and rows["kd_inf"]["seeds"] == 0 and rows["kd_inf"]["top1_mean"] is None
    assert rows["ce"]["failed"] == 0 and rows["ce"]["top1_mean"] > 0
    assert [r["method"] for r in summary["methods"]] == ["ce", "kd_inf"]
    markdown = (tmp_path / "results/summary.md").read_text()
    assert "0 (+1 failed)" in markdown and "kd_inf seed 0:" in markdown


@pytest.mark.slow
def test_dvc_repro_with_a_diverging_student_finishes_and_marks_it(tmp_path):
    """Through DVC the failed student's `evaluate` stage writes every declared output, so
    `aggregate` runs and the table marks the failure, as through the Prefect flow."""
    dest = make_project(tmp_path, diverging_study())
    env = project_env(dest)
    output = run([str(BIN / "dvc"), "repro"], dest, env, timeout=400).stdout  # exit 0, or it raises
    assert {"train_student@kd_inf-0", "evaluate@ce-0", "evaluate@kd_inf-0", "aggregate"} <= ran_stages(output)
    ce = json.loads((dest / "artifacts/evaluations/ce/seed0/metrics.json").read_text())
    assert "failed" not in ce and ce["top1"] > 0
    failed = dest / "artifacts/evaluations/kd_inf/seed0"
    assert "kd_inf seed 0" in json.loads((failed / "metrics.json").read_text())["failed"]
    assert "failed" in json.loads((failed / "reliability.json").read_text())
    summary = json.loads((dest / "results/summary.json").read_text())
    rows = {r["method"]: r for r in summary["methods"]}
    assert rows["kd_inf"]["failed"] == 1 and rows["kd_inf"]["seeds"] == 0 and rows["kd_inf"]["top1_mean"] is None
    assert rows["ce"]["failed"] == 0 and rows["ce"]["top1_mean"] > 0
    assert "0 (+1 failed)" in (dest / "results/summary.md").read_text()
    assert artifacts.is_complete(dest / "results") and artifacts.is_complete(failed)
    assert ran_stages(run([str(BIN / "dvc"), "repro"], dest, env).stdout) == set()  # the failure is a cached result
