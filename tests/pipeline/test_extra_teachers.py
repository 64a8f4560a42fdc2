"""Both front doors know the extra and fine-tuned teachers: DVC stages per teacher, the
Prefect flow's tasks per teacher; a study without them keeps today's stages."""
import copy
import json
import sqlite3
import subprocess

import pytest
import yaml

from tests.helpers.project import BIN, ROOT, flow_env, make_project, project_env, ran_stages, run
from tests.helpers.study import TINY_STUDY

TODAY = {"check_study", "prepare_data", "train_teacher", "cache_logits", "train_student", "evaluate", "aggregate"}


def teachers_study(tracking: bool = False):
    raw = copy.deepcopy(TINY_STUDY)
    raw["teachers"] = {"second": {"arch": "mlp", "seed": 1, "schedule": {"epochs": 1, "batch_size": 128, "lr": 0.05}}}
    raw["finetuned_teachers"] = {"teacher_mcmi": {"lam": -0.5, "schedule": {"epochs": 1, "batch_size": 128, "lr": 0.01}}}
    raw["students"]["methods"] = ["kd", "kd_mcmi", "mt"]
    raw["students"]["schedule"]["epochs"] = 1
    raw["methods"] = {
        "kd": {},
        "kd_mcmi": {"method": "kd", "teacher": "teacher_mcmi"},
        "mt": {"method": "multi_teacher_kd", "teachers": ["teacher", "second"]},
    }
    raw["tracking"]["enabled"] = tracking
    return raw


def stage_families(dest, env) -> set[str]:
    listed = run([str(BIN / "dvc"), "stage", "list", "--name-only"], dest, env).stdout.split()
    return {name.split("@")[0] for name in listed}


def assert_teacher_rows(summary: dict, manifests: dict[str, dict], lam: float) -> None:
    """summary.json has one row per teacher, its numbers those of the teacher's manifest."""
    rows = {r["name"]: r for r in summary["teachers"]}
    assert list(rows) == ["teacher", "second", "teacher_mcmi"]
    for name, m in manifests.items():
        assert (rows[name]["key"], rows[name]["arch"], rows[name]["top1"], rows[name]["best_top1"], rows[name]["best_epoch"]) == (
            m["key"], m["meta"]["arch"], m["meta"]["test"]["top1"], m["meta"]["best_top1"], m["meta"]["best_epoch"])
    assert [rows[n]["made"] for n in rows] == ["trained", "trained", "finetuned"]
    assert (rows["teacher_mcmi"]["regularizer"], rows["teacher_mcmi"]["lam"], rows["teacher_mcmi"]["from"]) == ("mcmi", lam, "teacher")


def test_a_study_without_extra_teachers_keeps_todays_stages(tmp_path):
    """The default params.yaml (no `teachers` / `finetuned_teachers` keys at all) and the
    tiny study parse with the same stage families as before these features."""
    for name, study in (("default", yaml.safe_load((ROOT / "params.yaml").read_text())), ("tiny", TINY_STUDY)):
        dest = make_project(tmp_path / name, study)
        assert stage_families(dest, project_env(dest)) == TODAY


@pytest.mark.slow
def test_dvc_repro_with_an_extra_and_a_finetuned_teacher(tmp_path):
    dest = make_project(tmp_path / "p", teachers_study(tracking=True))
    env = project_env(dest)
    first = run([str(BIN / "dvc"), "repro"], dest, env, timeout=600).stdout
    assert ran_stages(first) == {
        "check_study", "prepare_data", "train_teacher", "cache_logits",
        "train_extra_teacher@second", "finetune_teacher@teacher_mcmi",
        "cache_extra_logits@second", "cache_finetuned_logits@teacher_mcmi",
        "train_student@kd-0", "train_student@kd_mcmi-0", "train_student@mt-0",
        "evaluate@kd-0", "evaluate@kd_mcmi-0", "evaluate@mt-0", "aggregate",
    }
    manifest = lambda path: json.loads((dest / path / "manifest.json").read_text())  # noqa: E731
    tuned = manifest("artifacts/teachers/teacher_mcmi")
    assert tuned["meta"]["base_key"] == manifest("artifacts/teacher")["key"]
    assert manifest("artifacts/logits/teacher_mcmi")["meta"]["teacher_key"] == tuned["key"]
    # each student read the caches of the teachers its entry names
    assert manifest("artifacts/students/kd_mcmi/seed0")["meta"]["teacher_key"] == tuned["key"]
    assert manifest("artifacts/students/kd/seed0")["meta"]["teacher_key"] == manifest("artifacts/teacher")["key"]
    assert manifest("artifacts/students/mt/seed0")["meta"]["teachers"] == ["teacher", "second"]
    # aggregate read every teacher: its row in the results, its child run in MLflow
    teachers = {"teacher": manifest("artifacts/teacher"), "second": manifest("artifacts/teachers/second"), "teacher_mcmi": tuned}
    assert_teacher_rows(json.loads((dest / "results/summary.json").read_text()), teachers, -0.5)
    assert "## Teachers" in (dest / "results/report.md").read_text()
    db = sqlite3.connect(dest / "mlflow.db")
    logged = dict(db.execute("select a.value, b.value from tags a join tags b on a.run_uuid = b.run_uuid "
                             "where a.key = 'teacher' and b.key = 'artifact_key'").fetchall())
    assert logged == {name: m["key"] for name, m in teachers.items()}

    # a changed fine-tune re-runs it and its cache, never the teachers trained from scratch
    changed = teachers_study(tracking=True)
    changed["finetuned_teachers"]["teacher_mcmi"]["lam"] = -1.0
    (dest / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    again = ran_stages(run([str(BIN / "dvc"), "repro"], dest, env, timeout=600).stdout)
    assert {"finetune_teacher@teacher_mcmi", "cache_finetuned_logits@teacher_mcmi", "train_student@kd_mcmi-0", "aggregate"} <= again
    teachers["teacher_mcmi"] = manifest("artifacts/teachers/teacher_mcmi")
    assert_teacher_rows(json.loads((dest / "results/summary.json").read_text()), teachers, -1.0)
    assert not again & {"prepare_data", "train_teacher", "cache_logits", "train_extra_teacher@second", "cache_extra_logits@second"}


def test_unknown_teacher_stops_the_stage_with_its_field(tmp_path):
    bad = teachers_study()
    bad["methods"]["kd_mcmi"]["teacher"] = "nope"
    params = tmp_path / "bad.yaml"
    params.write_text(yaml.safe_dump(bad))
    result = subprocess.run(
        [str(BIN / "python"), "-m", "tasks.finetune_teacher", "--params", str(params), "--teacher", "teacher_mcmi"],
        cwd=ROOT, env=project_env(ROOT), capture_output=True, text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "methods.kd_mcmi.teacher: unknown teacher 'nope'" in result.stderr


FLOW = """
import asyncio, json
from flows.pipeline import kd_pipeline
from tests.helpers.project import task_states

out = []
for kwargs in ({}, {}, {"overrides": {"finetuned_teachers": {"teacher_mcmi": {"lam": -1.0}}}}):
    state = kd_pipeline(params_path="params.yaml", return_state=True, **kwargs)
    out.append({"ok": state.is_completed(), "tasks": asyncio.run(task_states(state.state_details.flow_run_id)),
                "results": state.result()["dir"]})
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_flow_trains_and_caches_every_teacher_once(tmp_path):
    dest = make_project(tmp_path / "f", teachers_study())
    result = run([str(BIN / "python"), "-c", FLOW], dest, flow_env(dest), timeout=600)
    first, second, changed = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("RESULT"))[6:])
    assert first["ok"] and second["ok"] and changed["ok"]
    names = [name for name, _ in first["tasks"]]
    assert {"train_teacher", "train_teacher[second]", "finetune_teacher[teacher_mcmi]"} <= set(names)
    assert names.count("cache_logits") == 3 and names.count("train_teacher") == 1
    assert {state for _, state in second["tasks"]} == {"Cached"}
    # a changed fine-tune re-runs it, its cache and the one student that reads it (not kd, not mt)
    rerun = sorted(name for name, state in changed["tasks"] if state != "Cached")
    assert rerun == ["aggregate", "cache_logits", "evaluate[kd_mcmi, seed 0]", "finetune_teacher[teacher_mcmi]",
                     "train_student[kd_mcmi, seed 0]"], rerun
    store = dest / ".kdflow/store"
    tuned = {json.loads(p.read_text())["key"] for p in store.glob("finetune_teacher/*/manifest.json")}
    student = next(json.loads(p.read_text()) for p in store.glob("train_student/*/manifest.json")
                   if json.loads(p.read_text())["meta"]["method"] == "kd_mcmi")
    assert student["meta"]["teacher_key"] in tuned
    # the flow handed aggregate every teacher's manifest: one row each, the numbers of the store's manifests
    stored = lambda step, name: next(json.loads(p.read_text()) for p in store.glob(f"{step}/*/manifest.json")  # noqa: E731
                                     if json.loads(p.read_text())["meta"]["arch"] == name)
    summary = json.loads((dest / first["results"] / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["teachers"]}
    teachers = {"teacher": stored("train_teacher", "resnet8"), "second": stored("train_teacher", "mlp"),
                "teacher_mcmi": next(json.loads(p.read_text()) for p in store.glob("finetune_teacher/*/manifest.json")
                                     if json.loads(p.read_text())["key"] == rows["teacher_mcmi"]["key"])}
    assert_teacher_rows(summary, teachers, -0.5)
