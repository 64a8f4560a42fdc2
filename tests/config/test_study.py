"""params.yaml validation: every bad input names its field path and the allowed values."""
from pathlib import Path

import pytest
import yaml

from kdlib.config import ConfigError, deep_merge, load_config, parse_config
from kdlib.methods.kd import KDSettings

ROOT = Path(__file__).resolve().parents[2]


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
    zoo = load_config(ROOT / "studies/zoo.yaml")
    assert len(zoo.students.methods) >= 19 and {"kd++", "dkd++", "sparse_kd"} <= set(zoo.students.methods)
    assert zoo.logits.topk == 10


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


# Shapes that cannot work: found by probing every arch of kdlib.models.ARCHS on the meta
# device. Conv nets read any image size >= 8; vgg8/vgg13 pool three times and fail below
# 8 px; batch norm refuses a training batch of 1 wherever it sees one value per channel
# (vgg's last stages at 8 px, every arch at 4 px, the mlp second head of dual-head methods).
def test_arch_too_deep_for_the_image_size_names_the_arch_field():
    msg = error_of({"students": {"arch": "vgg8"}, "data": {"image_size": 4}})
    assert "students.arch: vgg8 cannot run on 3x4x4 images of data.source 'synthetic'" in msg
    assert "Output size is too small" in msg and "larger data.image_size" in msg
    assert "teacher.arch: vgg13 cannot run on 3x6x6" in error_of({"teacher": {"arch": "vgg13"}, "data": {"image_size": 6}})


def test_the_same_arch_runs_where_its_pooling_fits():
    """The boundary cases of the shape probe above are accepted (the probe is no blanket refusal)."""
    cfg = parse_config(deep_merge(default_raw(), {"students": {"arch": "vgg8"}, "data": {"image_size": 8}}))
    assert (cfg.students.arch, cfg.data.image_size) == ("vgg8", 8)
    cfg = parse_config(deep_merge(default_raw(), {"students": {"arch": "vgg13"}, "data": {"source": "digits"}}))
    assert (cfg.students.arch, cfg.data.source) == ("vgg13", "digits")
    cfg = parse_config(deep_merge(default_raw(), {"teacher": {"arch": "resnet110"}, "data": {"image_size": 4}}))
    assert (cfg.teacher.arch, cfg.data.image_size) == ("resnet110", 4)


def test_batch_of_one_under_batch_norm_names_the_batch_size_field():
    msg = error_of({"students": {"schedule": {"batch_size": 1}}, "methods": {"dhkd": {"aux_head": "mlp"}}})
    assert "students.schedule.batch_size: 1 cannot train resnet8 with the mlp second head of methods.dhkd" in msg
    assert "set students.schedule.batch_size >= 2" in msg
    msg = error_of({"teacher": {"schedule": {"batch_size": 1}}, "data": {"image_size": 4}})
    assert "teacher.schedule.batch_size: 1 cannot train resnet20 on 3x4x4 images" in msg
    # the same batch of 1 is fine where no batch norm sees a single value per channel
    parse_config(deep_merge(default_raw(), {"students": {"schedule": {"batch_size": 1}, "methods": ["ce", "kd"]}}))


def test_shape_error_from_the_command_line_exits_2_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    raw = deep_merge(default_raw(), {"students": {"arch": "vgg13"}, "data": {"image_size": 4}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "tasks.prepare_data"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 2
    assert "students.arch: vgg13 cannot run on 3x4x4 images" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_an_online_teacher_is_probed_at_the_students_batch_size():
    ok = {"students": {"methods": ["bdkd"]}, "methods": {"bdkd": {}}, "teacher": {"arch": "vgg8"}}
    parse_config(deep_merge(default_raw(), ok))
    msg = error_of(deep_merge(ok, {"students": {"schedule": {"batch_size": 1}, "arch": "resnet8"}}))
    assert "students.schedule.batch_size: 1 cannot train vgg8 (the online teacher of methods.bdkd)" in msg
