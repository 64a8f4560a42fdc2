"""params.yaml validation: every bad input names its field path and the allowed values."""
from pathlib import Path

import pytest
import yaml

from kdlib.config import ConfigError, deep_merge, load_config, parse_config
from kdlib.methods import KDSettings

ROOT = Path(__file__).resolve().parents[1]


def default_raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def error_of(overrides: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(deep_merge(default_raw(), overrides), "params.yaml")
    return str(err.value)


def test_default_study_and_smoke_study_validate():
    cfg = load_config(ROOT / "params.yaml")
    assert len(cfg.students.seeds) >= 2
    assert set(cfg.students.methods) >= {"ce", "kd", "binarykl", "binarykl_norm", "ce+binarykl_norm", "dhkd", "dhkd_kd", "dkd"}
    assert load_config(ROOT / "studies/smoke.yaml").study == "smoke"
    assert len(load_config(ROOT / "studies/zoo.yaml").students.methods) == 16


def test_unknown_top_level_key_is_named():
    assert "studnets: unknown key" in error_of({"studnets": {}})


def test_unknown_nested_key_is_named_with_its_path():
    assert "students.schedule.epoch: unknown key" in error_of({"students": {"schedule": {"epoch": 3}}})


def test_literal_lists_allowed_values():
    msg = error_of({"data": {"source": "cifar1000"}})
    assert "data.source" in msg and "'synthetic'" in msg and "'digits'" in msg and "cifar1000" in msg


def test_negative_epochs_rejected():
    assert "teacher.schedule.epochs" in error_of({"teacher": {"schedule": {"epochs": -1}}})


def test_wrong_type_rejected():
    assert "students.seeds" in error_of({"students": {"seeds": "zero"}})


def test_unknown_arch_lists_allowed():
    msg = error_of({"students": {"arch": "resnet9"}})
    assert "students.arch" in msg and "resnet8" in msg and "resnet32x4" in msg


def test_unknown_method_lists_allowed():
    msg = error_of({"students": {"methods": ["kd", "fitnets"]}})
    assert "fitnets" in msg and "dhkd" in msg and "binarykl_norm" in msg


def test_unknown_method_setting_is_named():
    msg = error_of({"methods": {"kd": {"temprature": 2}}})
    assert "methods.kd.temprature: unknown key" in msg and "temperature" in msg


def test_bad_method_value_is_named():
    assert "methods.dhkd.aux_head" in error_of({"methods": {"dhkd": {"aux_head": "conv"}}})
    assert "methods.kd.temperature" in error_of({"methods": {"kd": {"temperature": 0}}})


def test_method_variant_uses_registry_method():
    cfg = parse_config(
        deep_merge(default_raw(), {"students": {"methods": ["kd_t2"]}, "methods": {"kd_t2": {"method": "kd", "temperature": 2}}})
    )
    settings = cfg.method_settings("kd_t2")
    assert isinstance(settings, KDSettings) and settings.temperature == 2 and settings.kd_weight == 0.9


def test_missing_method_block_uses_defaults():
    raw = default_raw()
    del raw["methods"]["kd"]
    assert parse_config(raw).method_settings("kd") == KDSettings(method="kd")


def test_schedule_consistency():
    assert "warmup_epochs" in error_of({"students": {"schedule": {"warmup_epochs": 8}}})
    assert "milestones" in error_of({"students": {"schedule": {"scheduler": "multistep", "milestones": [5, 2]}}})


def test_duplicate_seeds_rejected():
    assert "duplicate" in error_of({"students": {"seeds": [1, 1]}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("students: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_merge_into_study():
    cfg = load_config(ROOT / "params.yaml", {"students": {"seeds": [7]}})
    assert cfg.students.seeds == [7] and cfg.students.arch == "resnet8"
