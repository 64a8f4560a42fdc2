"""Code identity: a step's key covers exactly the code it runs for its config.

The closures are checked on the project itself; the edits (a comment appended to one
module, a new method module) on a throw-away copy, through the files `check_study` writes
for DVC — the same digests the Prefect keys hash.
"""
import copy
import json

import pytest

from kdlib.config import parse_config
from tasks import cache_logits, evaluate, finetune_teacher, prepare_data, train_student, train_teacher
from tasks.code_identity import closure, code_files
from tests.helpers.project import BIN, make_project, project_env, run
from tests.helpers.study import TINY_STUDY

DISTILLATION_CODE = ("kdlib/methods/", "kdlib/losses/", "kdlib/kernels/")


def study(**changes):
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["methods"] = ["ce", "kd", "dhkd", "dhkd_kd", "binarykl_norm"]
    raw["methods"] = {m: {} for m in raw["students"]["methods"]}
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def cfg():
    return parse_config(study())


def test_teacher_side_steps_run_no_distillation_code(cfg):
    for roots in (prepare_data.code_roots(cfg), train_teacher.CODE_ROOTS, cache_logits.CODE_ROOTS,
                  finetune_teacher.CODE_ROOTS):
        files = code_files(roots)
        assert not [f for f in files if f.startswith(DISTILLATION_CODE)], roots
        assert "kdlib/config.py" in files


def test_prepare_data_runs_only_its_own_source(cfg):
    files = code_files(prepare_data.code_roots(cfg))
    sources = [f for f in files if f.startswith("kdlib/data/sources/")]
    assert sorted(sources) == ["kdlib/data/sources/__init__.py", "kdlib/data/sources/base.py", "kdlib/data/sources/digits.py"]
    for roots in (train_teacher.CODE_ROOTS, train_student.code_roots(cfg, "kd")):
        assert not [f for f in code_files(roots) if f.startswith("kdlib/data/sources/")]


def test_a_student_runs_the_shared_training_code_and_its_own_method(cfg):
    dhkd = code_files(train_student.code_roots(cfg, "dhkd"))
    kd = code_files(train_student.code_roots(cfg, "kd"))
    for files in (dhkd, kd):
        assert {"tasks/train_student.py", "kdlib/train.py", "kdlib/methods/base.py"} <= set(files)
        assert any(f.startswith("kdlib/models/") for f in files) and any(f.startswith("kdlib/data/") for f in files)
    assert "kdlib/methods/dhkd.py" in dhkd and "kdlib/methods/dhkd.py" not in kd
    assert "kdlib/methods/kd.py" in kd and "kdlib/methods/kd.py" not in dhkd
    # DHKD's second head learns BinaryKLNorm: its loss and kernel families, and no other family's
    assert {"kdlib/losses/binary_kl.py", "kdlib/kernels/binary_kl.py"} <= set(dhkd)
    assert "kdlib/losses/dkd.py" not in dhkd and "kdlib/losses/binary_kl.py" not in kd


def test_evaluate_and_aggregate_follow_their_imports():
    # evaluate loads students with train_student's code: it depends on it, no hand-kept list
    assert "tasks.train_student" in closure(evaluate.CODE_ROOTS)
    assert "tasks.report" in closure(("tasks.aggregate",))


def test_the_mlflow_side_channel_is_no_steps_code():
    """Every training step logs to MLflow through tasks.tracking, which writes no artifact:
    editing it must not re-run a step."""
    for roots in (("tasks.train_student",), ("tasks.train_teacher",), ("tasks.evaluate",), ("tasks.aggregate",)):
        assert "tasks.tracking" not in closure(roots), roots


def test_an_unknown_root_is_refused():
    with pytest.raises(ValueError, match="no project module named kdlib.nothing"):
        closure(("kdlib.nothing",))


def stage_files(dest, env):
    run([str(BIN / "python"), "-m", "tasks.check_study"], dest, env)
    root = dest / "artifacts/study"
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*.json")}


def changed(before, after):
    return {name for name in after if before.get(name) != after[name]}


@pytest.fixture(scope="module")
def copy_of_project(tmp_path_factory):
    dest = make_project(tmp_path_factory.mktemp("identity"), study())
    env = project_env(dest)
    return dest, env, stage_files(dest, env)


def append_comment(path):
    path.write_text(path.read_text() + "\n# an edit\n")


def test_editing_dhkd_changes_only_dhkd_family_students(copy_of_project):
    dest, env, before = copy_of_project
    append_comment(dest / "kdlib/methods/dhkd.py")
    after = stage_files(dest, env)
    assert changed(before, after) == {"train_student/dhkd-0.json", "train_student/dhkd_kd-0.json"}


def test_editing_one_loss_family_changes_only_the_students_that_call_it(copy_of_project):
    dest, env, _ = copy_of_project
    before = stage_files(dest, env)
    append_comment(dest / "kdlib/losses/binary_kl.py")
    after = stage_files(dest, env)
    assert changed(before, after) == {
        "train_student/dhkd-0.json", "train_student/dhkd_kd-0.json", "train_student/binarykl_norm-0.json",
    }


def test_editing_the_training_loop_changes_every_training_step(copy_of_project):
    dest, env, _ = copy_of_project
    before = stage_files(dest, env)
    append_comment(dest / "kdlib/train.py")
    after = stage_files(dest, env)
    training = {"train_teacher/teacher.json", *(f"train_student/{m}-0.json" for m in study()["students"]["methods"])}
    assert training <= changed(before, after)
    assert "prepare_data.json" not in changed(before, after)


def test_a_new_method_module_adds_only_its_own_students(copy_of_project):
    dest, env, _ = copy_of_project
    before = stage_files(dest, env)
    (dest / "kdlib/methods/kd_t.py").write_text(
        '"""A test method: KD with its own name."""\n'
        "from kdlib.methods.base import register\n"
        "from kdlib.methods.kd import KD\n\n\n"
        "@register\nclass KDT(KD):\n    name = \"kd_t\"\n"
    )
    params = study()
    params["students"]["methods"].append("kd_t")
    params["methods"]["kd_t"] = {}
    (dest / "params.yaml").write_text(json.dumps(params))
    after = stage_files(dest, env)
    assert changed(before, after) == {"train_student/kd_t-0.json", "aggregate.json"}
