"""The teachers a study declares (`teachers`, `finetuned_teachers`) and the entries that read them:
parsed, and every mistake named by its field path."""
import pytest

from kdlib.config import ConfigError, parse_config
from tests.helpers.study import study_with_teachers


def test_study_declares_teachers():
    cfg = parse_config(study_with_teachers())
    assert cfg.teacher_names() == ["teacher", "second", "teacher_mcmi"]
    assert cfg.method_settings("kd_mcmi").teacher == "teacher_mcmi"
    # the teacher choice is not a loss setting: the student's key holds the chosen cache instead
    assert "teacher" not in cfg.method_settings("kd_mcmi").model_dump()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"methods__kd_mcmi": {"method": "kd", "teacher": "mcmi"}},
         "methods.kd_mcmi.teacher: unknown teacher 'mcmi'; declared teachers: teacher, second, teacher_mcmi"),
        ({"methods__mt": {"method": "multi_teacher_kd", "teachers": ["teacher", "third"]}},
         "methods.mt.teachers: unknown teacher 'third'"),
        ({"methods__mt": {"method": "multi_teacher_kd", "teachers": ["teacher"]}}, "methods.mt.teachers: List should have at least 2 items"),
        ({"methods__mt": {"method": "multi_teacher_kd", "teachers": ["second", "second"]}}, "lists a teacher twice"),
        ({"methods__mt": {"method": "multi_teacher_kd", "teachers": ["teacher", "second"], "teacher": "second"}},
         "methods.mt.teacher: method 'multi_teacher_kd' names its teachers in `teachers`"),
        ({"students__methods": ["ce"], "methods": {"ce": {"teacher": "second"}}}, "methods.ce.teacher: method 'ce' reads no logit cache"),
        ({"teachers": {"teacher": {"schedule": {"epochs": 1}}}}, "teachers.teacher: 'teacher' is the name of `teacher`"),
        ({"teachers": {"a b": {"schedule": {"epochs": 1}}}}, "teachers: 'a b' is not a valid name"),
        ({"teachers": {"second": {"arch": "nope", "schedule": {"epochs": 1}}}}, "teachers.second.arch: unknown arch 'nope'"),
        ({"finetuned_teachers": {"second": {}}}, "finetuned_teachers: ['second'] also declared under teachers"),
        ({"finetuned_teachers": {"teacher_mcmi": {"lam": 0.5}}}, "finetuned_teachers.teacher_mcmi.lam: Input should be less than 0"),
        ({"finetuned_teachers": {"teacher_mcmi": {"regularizer": "none", "lam": -1}}},
         "lam is the weight of the MCMI term: it needs regularizer: mcmi"),
        ({"finetuned_teachers": {"teacher_mcmi": {"regularizer": "cmi"}}}, "finetuned_teachers.teacher_mcmi.regularizer"),
    ],
)
def test_config_errors_name_the_field(changes, message):
    with pytest.raises(ConfigError) as err:
        parse_config(study_with_teachers(**changes))
    assert message in str(err.value)


def test_extra_and_finetuned_teachers_are_shape_checked():
    """vgg8 ends in a 1x1 map: batch norm cannot train it on a batch of 1."""
    tiny_batch = {"epochs": 1, "batch_size": 1}
    with pytest.raises(ConfigError, match=r"teachers\.second\.schedule\.batch_size: 1 cannot train vgg8"):
        parse_config(study_with_teachers(teachers={"second": {"arch": "vgg8", "schedule": tiny_batch}}))
    with pytest.raises(ConfigError, match=r"finetuned_teachers\.teacher_mcmi\.schedule\.batch_size: 1 cannot train vgg8"):
        parse_config(study_with_teachers(teacher__arch="vgg8", finetuned_teachers={"teacher_mcmi": {"schedule": tiny_batch}}))
