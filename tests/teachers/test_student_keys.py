"""A student's key holds the logit caches of the teachers it reads, and no teacher when it reads none."""
import pytest

from kdlib.config import parse_config
from tests.helpers.study import study_with_teachers


def test_student_key_holds_the_caches_it_reads():
    from tasks import train_student

    cfg = parse_config(study_with_teachers())
    data = {"files": {"dataset.pt": "d"}}
    cache = {name: {"files": {"views.pt": name}} for name in ("teacher", "second", "teacher_mcmi")}
    assert train_student.student_teachers(cfg, "mt") == ["teacher", "second", "teacher_mcmi"]
    key = lambda method, logits: train_student.key(cfg, method, 0, data, logits)  # noqa: E731
    assert key("kd", cache["teacher"]) != key("kd", cache["teacher_mcmi"])
    stacks = [cache["teacher"], cache["second"], cache["teacher_mcmi"]]
    assert key("mt", stacks) != key("mt", stacks[::-1]) != key("mt", stacks[:2])


def test_a_student_that_reads_no_cache_has_no_teacher_in_its_key():
    """ce, zloss, ldr, uskd read no logit cache: a new teacher (a changed logits manifest)
    must not retrain them, only re-evaluate them; a kd student's key follows the cache."""
    from tasks import train_student

    raw = study_with_teachers()
    raw["methods"].update({"ce": {}, "uskd": {}})
    cfg = parse_config(raw)
    data = {"files": {"dataset.pt": "d"}}
    old, new = {"files": {"views.pt": "old teacher"}}, {"files": {"views.pt": "new teacher"}}
    key = lambda method, logits: train_student.key(cfg, method, 0, data, logits)  # noqa: E731
    for method in ("ce", "uskd"):
        assert not train_student.reads_cache(cfg, method) and train_student.student_teachers(cfg, method) == []
        assert key(method, old) == key(method, new) == key(method, None)
    assert train_student.reads_cache(cfg, "kd") and key("kd", old) != key("kd", new)
    with pytest.raises(ValueError, match="no cache_logits manifest"):
        train_student.run(cfg, "kd", 0, data, None, "unused")
