"""Names a study gives are data: one safe pattern for the study, method entries and teachers."""
import copy

import pytest

from kdlib.config import ConfigError, parse_config
from tests.helpers.study import TINY_STUDY

HOSTILE = ["kd;touch pwned;#", "../escape", "a/b", "kd x", "-rf", "$(id)", "kd`id`", "", "x" * 65, "kd.t2", "é"]


def with_method_entry(name):
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["methods"] = ["ce", name]
    raw["methods"] = {"ce": {}, name: {"method": "kd"}}
    return raw


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_method_entry_name_is_refused_naming_it(name):
    with pytest.raises(ConfigError) as err:
        parse_config(with_method_entry(name))
    assert f"students.methods: {name!r} is not a valid name" in str(err.value)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_study_or_teacher_name_is_refused(name):
    with pytest.raises(ConfigError, match="study: .* is not a valid name"):
        parse_config({**copy.deepcopy(TINY_STUDY), "study": name})
    raw = copy.deepcopy(TINY_STUDY)
    raw["teachers"] = {name: {"arch": "mlp", "schedule": {"epochs": 1}}}
    with pytest.raises(ConfigError, match="teachers: .* is not a valid name"):
        parse_config(raw)


def test_an_unlisted_methods_block_with_a_hostile_name_is_refused():
    raw = copy.deepcopy(TINY_STUDY)
    raw["methods"]["../x"] = {"method": "kd"}
    with pytest.raises(ConfigError, match=r"methods: '\.\./x' is not a valid name"):
        parse_config(raw)


@pytest.mark.parametrize("name", ["ce+binarykl_norm", "kd++", "dkd+ls", "kd_t2", "KD-3", "9lives"])
def test_the_zoo_s_names_are_valid(name):
    raw = with_method_entry(name)
    assert name in parse_config(raw).students.methods
