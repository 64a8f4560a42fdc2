"""A student with an online teacher (BD-KD) in the DAG: its key holds the teacher's arch, not
a logit cache, and it trains with no teacher step and no cache."""
import copy
import json

import pytest

from kdlib.config import parse_config
from tasks import prepare_data, train_student
from tests.conftest import TINY_STUDY


def study(**teacher):
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["methods"] = ["bdkd", "kd"]
    raw["students"]["schedule"]["epochs"] = 1
    raw["methods"] = {}
    raw["teacher"].update(teacher)
    return raw


def test_bdkd_key_holds_the_teacher_arch_not_the_cache():
    cfg = parse_config(study())
    data, cache_a, cache_b = {"files": {"d": "1"}}, {"files": {"l": "a"}}, {"files": {"l": "b"}}
    k = train_student.key(cfg, "bdkd", 0, data, None)
    assert k == train_student.key(cfg, "bdkd", 0, data, cache_a) == train_student.key(cfg, "bdkd", 0, data, cache_b)
    assert train_student.key(parse_config(study(arch="resnet14")), "bdkd", 0, data, None) != k
    # a method that reads the cache keeps the cache in its key
    assert train_student.key(cfg, "kd", 0, data, cache_a) != train_student.key(cfg, "kd", 0, data, cache_b)
    assert train_student.config_slice(cfg, "bdkd", 0)["online_teacher"] == {"arch": "resnet8"}


def test_bdkd_trains_with_no_teacher_and_no_cache(tmp_path):
    raw = study()
    raw["runtime"]["store"] = str(tmp_path / "store")
    cfg = parse_config(raw)
    data = prepare_data.run(cfg, tmp_path / "data")
    student = train_student.run(cfg, "bdkd", 0, data, None, tmp_path / "student")
    meta = student["meta"]
    assert "failed" not in meta and meta["teacher_key"] is None and meta["online_teacher_arch"] == "resnet8"
    assert 0.0 <= meta["online_teacher_top1"] <= 100.0
    history = json.loads((tmp_path / "student" / train_student.HISTORY).read_text())
    assert history[-1]["online_teacher_test_top1"] == meta["online_teacher_top1"]
    train_student.load_student(cfg, data, student)  # the export is the student alone (strict load)
    with pytest.raises(ValueError, match="'kd': no cache_logits manifest given"):
        train_student.run(cfg, "kd", 0, data, None, tmp_path / "kd")
