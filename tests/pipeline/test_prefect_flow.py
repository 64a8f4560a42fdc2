"""The Prefect front door: the flow runs the DAG, and a second run with the same parameters is all Cached."""
import json

import pytest

from tests.helpers.project import BIN, make_project, project_env, run
from tests.helpers.study import TINY_STUDY

pytestmark = pytest.mark.slow

# Runs the flow twice in one process (one temporary Prefect server), then a changed study,
# and prints each run's task states.
SCRIPT = """
import asyncio, json
from flows.pipeline import kd_pipeline
from tests.helpers.project import task_states

out = []
for kwargs in ({}, {}, {"overrides": {"methods": {"kd": {"temperature": 2.0}}}}, {}):
    state = kd_pipeline(params_path="params.yaml", return_state=True, **kwargs)
    out.append({"ok": state.is_completed(), "summary": state.result()["dir"], "tasks": asyncio.run(task_states(state.state_details.flow_run_id))})
print("RESULT" + json.dumps(out))

# damage the teacher and one student in the store; the same flow run rebuilds exactly those
import pathlib
store = pathlib.Path(".kdflow/store")
teacher = next((store / "train_teacher").glob("*/model.pt"))
student = next(p for p in (store / "train_student").glob("*/model.pt")
               if json.loads((p.parent / "manifest.json").read_text())["meta"]["method"] == "ce")
before = {p: p.read_bytes() for p in (teacher, student)}
teacher.write_bytes(before[teacher][: len(before[teacher]) // 2])
student.write_bytes(before[student][:-1] + bytes([before[student][-1] ^ 1]))
state = kd_pipeline(params_path="params.yaml", return_state=True)
pathlib.Path("damaged.json").write_text(json.dumps({
    "ok": state.is_completed(), "tasks": asyncio.run(task_states(state.state_details.flow_run_id)),
    "restored": [p.read_bytes() == data for p, data in before.items()],
}))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    dest = make_project(tmp_path_factory.mktemp("flow"), TINY_STUDY)
    result = run([str(BIN / "python"), "-c", SCRIPT], dest, project_env(dest), timeout=400)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return dest, json.loads(line[len("RESULT"):])


def test_first_run_completes_every_task(runs):
    dest, (first, *_) = runs
    assert first["ok"]
    assert sorted(name for name, _ in first["tasks"]) == [
        "aggregate", "cache_logits", "evaluate[ce, seed 0]", "evaluate[kd, seed 0]",
        "prepare_data", "train_student[ce, seed 0]", "train_student[kd, seed 0]", "train_teacher",
    ]
    assert {state for _, state in first["tasks"]} == {"Completed"}
    assert (dest / first["summary"] / "summary.md").is_file()


def test_second_run_is_all_cached(runs):
    _, (_, second, *_) = runs
    assert second["ok"]
    assert len(second["tasks"]) == 8
    assert {state for _, state in second["tasks"]} == {"Cached"}


def test_changed_method_setting_reruns_only_that_method(runs):
    _, (_, _, third, _) = runs
    ran = sorted(name for name, state in third["tasks"] if state != "Cached")
    assert ran == ["aggregate", "evaluate[kd, seed 0]", "train_student[kd, seed 0]"], third["tasks"]


def test_reverting_the_setting_brings_back_the_first_artifacts(runs):
    _, (first, _, _, fourth) = runs
    assert {state for _, state in fourth["tasks"]} == {"Cached"}, fourth["tasks"]
    assert fourth["summary"] == first["summary"]


def test_store_is_content_addressed(runs):
    dest, (first, _, third, _) = runs
    students = sorted(p.name for p in (dest / ".kdflow/store/train_student").iterdir() if not p.name.startswith("."))
    assert len(students) == 3  # ce, kd at T=4, kd at T=2: both kd artifacts kept side by side
    assert first["summary"] != third["summary"]


def test_damaged_store_artifacts_are_rebuilt_and_nothing_else(runs):
    dest, _ = runs
    damaged = json.loads((dest / "damaged.json").read_text())
    assert damaged["ok"]
    states = dict(damaged["tasks"])
    teacher = next(name for name in states if name.startswith("train_teacher"))
    assert states[teacher] == states["train_student[ce, seed 0]"] == "Completed", states
    assert damaged["restored"] == [True, True]  # CPU training is deterministic: the same weights, the same bytes
    # the rebuilt teacher and student are the same bytes (no wall-clock time in their files):
    # every step that reads them keeps its key and stays cached
    assert {name for name, state in states.items() if state != "Cached"} == {teacher, "train_student[ce, seed 0]"}, states


# After `runs`: a flow run with an invalid study; then one comment appended to KD's module, then one to
# the training loop, a flow run after each.
EDITS = """
import asyncio, json, pathlib, sys
from flows.pipeline import kd_pipeline
from tests.helpers.project import task_states

if sys.argv[1] == "invalid":
    state = kd_pipeline(params_path="params.yaml", overrides={"optimiser": "adam"}, return_state=True)
    out = {"failed": state.is_failed(), "message": state.message}
else:
    path = pathlib.Path(sys.argv[1])
    path.write_text(path.read_text() + "\\n# an edit\\n")
    state = kd_pipeline(params_path="params.yaml", return_state=True)
    out = {}
out["tasks"] = dict(asyncio.run(task_states(state.state_details.flow_run_id)))
print("RESULT" + json.dumps(out))
"""


def test_invalid_study_fails_first_and_code_edits_recompute_only_their_steps(runs):
    dest, _ = runs
    def flow_run(arg: str) -> dict:
        """One flow run in a fresh process (a process keeps the code identity of the code it loaded)."""
        result = run([str(BIN / "python"), "-c", EDITS, arg], dest, project_env(dest), timeout=300)
        return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))[6:])

    invalid = flow_run("invalid")
    # an invalid study fails the flow run with the config error, before any task
    assert invalid["failed"] and "optimiser: unknown key" in invalid["message"] and invalid["tasks"] == {}
    # the kd student retrains; it comes out the same bytes, so its evaluation's inputs (file
    # hashes) are unchanged and the rest may stay cached
    method_edit = flow_run("kdlib/methods/kd.py")["tasks"]
    computed = {name for name, state in method_edit.items() if state != "Cached"}
    assert "train_student[kd, seed 0]" in computed, method_edit
    assert computed <= {"train_student[kd, seed 0]", "evaluate[kd, seed 0]", "aggregate"}, method_edit
    # the training loop runs in the teacher and every student: all of them retrain; the data does not
    loop_edit = flow_run("kdlib/train.py")["tasks"]
    computed = {name for name, state in loop_edit.items() if state != "Cached"}
    assert {"train_teacher", "train_student[ce, seed 0]", "train_student[kd, seed 0]"} <= computed, loop_edit
    assert loop_edit["prepare_data"] == "Cached"
