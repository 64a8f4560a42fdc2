"""The registry (kdlib.methods.base): every family's defaults and flags as registered, the
names it lists, and the errors of an unknown or doubly registered method."""
import pytest

from kdlib.methods.base import (
    Method,
    MethodSettings,
    build_method,
    method_class,
    method_names,
    register,
    validate_method_entry,
)


DEFAULTS = {
    "kd++": {"temperature": 4.0, "ce_weight": 1.0, "kd_weight": 3.5, "nd_weight": 2.0, "warmup_epochs": 20,
             "warmup_start": "official"},
    "dkd++": {"ce_weight": 1.0, "alpha": 2.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20, "nd_weight": 0.5,
              "warmup_start": "official"},
    "sparse_kd": {"ce_weight": 0.1, "kd_weight": 0.9},
}


def test_defaults_are_the_nd_repos_and_tinyvits():
    for name, defaults in DEFAULTS.items():
        assert validate_method_entry(name, None).model_dump(exclude={"method"}) == defaults
        assert method_class(name).needs_teacher
    assert method_class("kd++").cached == ("logits", "feature_norms", "class_means")
    assert method_class("sparse_kd").cached == ("topk_probs", "topk_indices")
    assert method_class("kd").cached == ("logits",)


def test_defaults_and_flags():
    assert validate_method_entry("uskd", None).model_dump(exclude={"method"}) == {
        "ce_weight": 1.0, "alpha": 0.1, "beta": 0.1, "mu": 0.1, "nontarget_rank": "official",
    }
    assert validate_method_entry("bdkd", None).model_dump(exclude={"method"}) == {
        "ce_weight": 1.0, "kd_weight": 1.0, "teacher_ce_weight": 1.0, "teacher_kd_weight": 1.0, "temperature": 4.0,
    }
    assert method_class("uskd").needs_teacher is False and method_class("uskd").online_teacher is False
    assert method_class("bdkd").needs_teacher is False and method_class("bdkd").online_teacher is True
    with pytest.raises(ValueError, match=r"methods\.uskd\.gamma: unknown key"):
        validate_method_entry("uskd", {"gamma": 1})


def test_the_registry_lists_every_family_module_s_methods():
    assert method_names() == sorted(method_names())
    assert set(method_names()) == {
        "ce", "kd", "binarykl", "binarykl_norm", "ce+binarykl", "ce+binarykl_norm", "dhkd", "dhkd_kd", "dkd", "kd+ls",
        "dkd+ls", "dist", "pld", "nkd", "zloss", "ldr", "sinkd", "kd++", "dkd++", "sparse_kd", "uskd", "bdkd",
        "multi_teacher_kd", "reverse_kl", "gkd",
    }
    # each method is defined in its family's module
    assert method_class("dhkd").__module__ == method_class("dhkd_kd").__module__ == "kdlib.methods.dhkd"
    assert method_class("binarykl_norm").__module__ == "kdlib.methods.binary_kl"
    assert method_class("kd++").__module__ == method_class("dkd++").__module__ == "kdlib.methods.nd"


def test_an_unknown_method_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown method 'fitnets'; allowed: .*dhkd"):
        method_class("fitnets")
    with pytest.raises(ValueError, match=r"methods\.variant\.method: unknown method 'fitnets'"):
        validate_method_entry("variant", {"method": "fitnets"})


def test_a_name_registered_twice_is_refused():
    class Other(Method):
        name = "kd"

    with pytest.raises(ValueError, match="method name 'kd' registered twice"):
        register(Other)
    assert register(method_class("kd")) is method_class("kd")  # the same class again is no conflict


def test_build_method_takes_the_parsed_settings():
    settings = validate_method_entry("kd_t2", {"method": "kd", "temperature": 2})
    method = build_method("kd_t2", settings)
    assert method.name == "kd" and method.settings is settings
    with pytest.raises(TypeError, match="takes the entry's parsed settings"):
        build_method("kd", {"temperature": 2})
    with pytest.raises(TypeError, match="methods.kd: settings MethodSettings are not 'kd'"):
        build_method("kd", MethodSettings(method="kd"))
