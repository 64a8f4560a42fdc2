"""A student with an online teacher (BD-KD) in the DAG: its key holds the teacher's arch, not
a logit cache, and it trains with no teacher step and no cache.

In both front doors (slow): in the Prefect flow its student depends on the data alone (not on
train_teacher or cache_logits); under `dvc repro` its stage trains without reading the cache.
A ce student (no teacher) likewise waits for no teacher in the flow, and a new teacher re-runs
its evaluate only, not its training."""
import copy
import json

import pytest

from kdlib.config import parse_config
from tasks import prepare_data, train_student
from tests.helpers.project import BIN, flow_env, make_project, project_env, run
from tests.helpers.study import TINY_STUDY


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


# Runs the flow once and prints, per task run, the names of the task runs it took inputs from.
SCRIPT = """
import asyncio, json, sys
from flows.pipeline import kd_pipeline
from tests.helpers.project import study_task_runs

async def upstream(flow_run_id):
    runs = await study_task_runs(flow_run_id)
    names = {r.id: r.name for r in runs}
    return {
        r.name: sorted({names[i.id] for inputs in r.task_inputs.values() for i in inputs if getattr(i, "input_type", "") == "task_run"})
        for r in runs
    }

state = kd_pipeline(params_path="params.yaml", overrides=json.loads(sys.argv[1]), return_state=True)
print("RESULT" + json.dumps({"ok": state.is_completed(), "upstream": asyncio.run(upstream(state.state_details.flow_run_id))}))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    study = copy.deepcopy(TINY_STUDY)
    study["students"]["methods"] = ["kd", "bdkd", "ce"]
    study["students"]["schedule"]["epochs"] = 1
    study["methods"] = {"kd": {}, "bdkd": {}, "ce": {}}
    study["tracking"]["enabled"] = False
    return make_project(tmp_path_factory.mktemp("online"), study)


def flow(project, overrides: dict) -> dict:
    result = run([str(BIN / "python"), "-c", SCRIPT, json.dumps(overrides)], project, flow_env(project), timeout=400)
    out = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    assert out["ok"]
    return out["upstream"]


@pytest.mark.slow
def test_flow_students_without_a_teacher_wait_for_none(project):
    upstream = flow(project, {})
    teacher_side = ("train_teacher", "finetune_teacher", "cache_logits")
    for method in ("bdkd", "ce"):
        # Prefect infers task inputs from object ids, which can also name a sibling student
        # task run (its documented stale-id limitation): only the teacher side is asserted
        assert not [name for name in upstream[f"train_student[{method}, seed 0]"] if name.startswith(teacher_side)]
        assert "cache_logits" in upstream[f"evaluate[{method}, seed 0]"]  # evaluation compares with the cached teacher
    assert "cache_logits" in upstream["train_student[kd, seed 0]"]
    store = project / ".kdflow/store"

    def artifacts_of(step: str) -> set[str]:  # the store's artifact folders, not its .lock files
        return {p.name for p in (store / step).iterdir() if not p.name.startswith(".")}

    trained, evaluated = artifacts_of("train_student"), artifacts_of("evaluate")
    assert len(trained) == len(evaluated) == 3
    # a new teacher: only the kd student is trained again; all three are evaluated again
    flow(project, {"teacher": {**TINY_STUDY["teacher"], "seed": 1}})
    assert len(artifacts_of("train_student") - trained) == 1
    assert len(artifacts_of("evaluate") - evaluated) == 3


@pytest.mark.slow
def test_dvc_bdkd_stage_trains_without_the_cache(project):
    env = project_env(project)
    run([str(BIN / "dvc"), "repro", "train_student@bdkd-0"], project, env, timeout=400)
    manifest = json.loads((project / "artifacts/students/bdkd/seed0/manifest.json").read_text())
    assert manifest["meta"]["teacher_key"] is None and manifest["meta"]["online_teacher_arch"] == "resnet8"
    assert 0.0 <= manifest["meta"]["online_teacher_top1"] <= 100.0
