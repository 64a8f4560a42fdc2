"""The Prefect front door: the flow runs the DAG, and a second run with the same parameters is all Cached;
each flow run has its MLflow parent (live child runs for what it computed, links to what it reused) and its
Prefect artifacts."""
import json

import pytest

from tests.helpers.project import BIN, flow_env, make_project, mlflow_runs, run
from tests.helpers.study import TINY_STUDY

pytestmark = pytest.mark.slow

# Runs the flow twice in one process (one temporary Prefect server), then a changed study,
# and prints each run's task states.
SCRIPT = """
import asyncio, json
from flows.pipeline import kd_pipeline
from tests.helpers.project import flow_run_artifacts, task_states

out = []
for kwargs in ({}, {}, {"overrides": {"methods": {"kd": {"temperature": 2.0}}}}, {}):
    state = kd_pipeline(params_path="params.yaml", return_state=True, **kwargs)
    flow_run_id = state.state_details.flow_run_id
    out.append({"ok": state.is_completed(), "summary": state.result()["dir"], "tasks": asyncio.run(task_states(flow_run_id)),
                "flow_run_id": str(flow_run_id), "artifacts": asyncio.run(flow_run_artifacts(flow_run_id))})
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
    result = run([str(BIN / "python"), "-c", SCRIPT], dest, flow_env(dest), timeout=400)
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


def test_every_flow_run_has_its_mlflow_parent_and_logs_only_what_it_computed(runs):
    dest, flow_runs = runs
    logged = mlflow_runs(dest / "mlflow.db")
    parents = {r["tags"]["prefect.flow_run_id"]: (run_id, r) for run_id, r in logged.items() if r["tags"].get("role") == "pipeline"}
    assert len({r["name"] for _, r in parents.values()}) == len(parents) >= 4  # distinct names (study + time)

    def tree(flow_run):
        parent_id, parent = parents[flow_run["flow_run_id"]]
        children = {r["name"]: (run_id, r) for run_id, r in logged.items() if r["tags"].get("mlflow.parentRunId") == parent_id}
        reused = {k.removeprefix("reused/"): json.loads(v) for k, v in parent["tags"].items() if k.startswith("reused/")}
        return parent, children, reused

    first, second, third, fourth = (tree(f) for f in flow_runs)
    assert first[0]["status"] == "FINISHED" and first[0]["tags"]["front_door"] == "prefect"
    assert set(first[1]) == {"teacher resnet8", "ce seed 0", "kd seed 0"} and not first[2]
    assert {r["status"] for _, r in first[1].values()} == {"FINISHED"}
    originals = {name: run_id for name, (run_id, _) in first[1].items()}
    # an all-cached flow run: a parent and no duplicate tree; it links the runs that computed its artifacts
    assert second[1] == {} and {name: link["run_id"] for name, link in second[2].items()} == originals
    assert {link["artifact_key"] for link in second[2].values()} == {
        first[1][name][1]["tags"]["artifact_key"] for name in originals}
    # one changed method: its student is a new child run, the untouched ones link to their original runs
    assert set(third[1]) == {"kd seed 0"} and third[1]["kd seed 0"][1]["tags"]["method"] == "kd"
    assert {name: link["run_id"] for name, link in third[2].items()} == {n: originals[n] for n in ("teacher resnet8", "ce seed 0")}
    # reverted: the kd artifact of the first run comes back, and so does the link to the run that computed it
    assert fourth[1] == {} and fourth[2]["kd seed 0"]["run_id"] == originals["kd seed 0"]
    assert sum(len(children) for _, children, _ in (first, second, third, fourth)) == 4  # each computed once, logged once
    # the flow run after the damage rebuilt the teacher and the ce student: it logs those two, as new runs
    damaged = max((r for _, r in parents.values()), key=lambda r: r["start"])
    rebuilt = {r["name"] for r in logged.values() if r["tags"].get("mlflow.parentRunId") in
               {run_id for run_id, r in parents.values() if r is damaged}}
    assert rebuilt == {"teacher resnet8", "ce seed 0"}


def test_each_flow_run_publishes_its_results_and_the_mlflow_link(runs):
    dest, flow_runs = runs
    logged = mlflow_runs(dest / "mlflow.db")
    for flow_run in flow_runs:
        artifacts = flow_run["artifacts"]
        assert artifacts["kd-results"]["type"] == "markdown" and "| kd |" in artifacts["kd-results"]["data"]
        parent = next(r for r, v in logged.items() if v["tags"].get("prefect.flow_run_id") == flow_run["flow_run_id"])
        link = artifacts["mlflow-parent-run"]
        # Prefect stores a link artifact as the Markdown link `[text](url)`
        assert link["data"].startswith("[MLflow run of tiny](http://") and link["data"].endswith(
            f"/runs/{parent}?workflowType=machine_learning)")
        report = dest / ".kdflow/reports" / flow_run["flow_run_id"] / "report.html"
        assert str(report.resolve()) in link["description"] and parent in report.read_text()


def test_each_flow_run_reports_where_its_time_went(runs):
    """The first run's report counts every task it computed; the all-Cached second run's
    computed nothing, and its table says so by having no step rows."""
    dest, flow_runs = runs
    first, second = (dest / ".kdflow/reports" / r["flow_run_id"] / "report.html" for r in flow_runs[:2])
    page = first.read_text()
    assert "Where the time went" in page and "the Prefect flow: " in page
    for step in ("prepare_data", "train_teacher", "cache_logits", "train_student", "evaluate", "aggregate"):
        assert f"<td>{step}</td>" in page, step
    later = second.read_text()
    assert "Where the time went" in later and "<td>train_student</td>" not in later


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

out = []
for arg in sys.argv[1:]:
    if arg == "invalid":
        state = kd_pipeline(params_path="params.yaml", overrides={"optimiser": "adam"}, return_state=True)
        result = {"failed": state.is_failed(), "message": state.message}
    else:  # before this process computed any code identity, which it then keeps
        path = pathlib.Path(arg)
        path.write_text(path.read_text() + "\\n# an edit\\n")
        state = kd_pipeline(params_path="params.yaml", return_state=True)
        result = {}
    result["tasks"] = dict(asyncio.run(task_states(state.state_details.flow_run_id)))
    out.append(result)
print("RESULT" + json.dumps(out))
"""


def test_invalid_study_fails_first_and_code_edits_recompute_only_their_steps(runs):
    dest, _ = runs
    def flow_runs(*args: str) -> list[dict]:
        """Flow runs in a fresh process: the invalid study computes no code identity, and an edit
        must come before the process computes one (it keeps the code identity of what it read)."""
        result = run([str(BIN / "python"), "-c", EDITS, *args], dest, flow_env(dest), timeout=300)
        return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))[6:])

    invalid, method_edit = flow_runs("invalid", "kdlib/methods/kd.py")
    # an invalid study fails the flow run with the config error, before any task
    assert invalid["failed"] and "optimiser: unknown key" in invalid["message"] and invalid["tasks"] == {}
    # the kd student retrains; it comes out the same bytes, so its evaluation's inputs (file
    # hashes) are unchanged and the rest may stay cached
    method_edit = method_edit["tasks"]
    computed = {name for name, state in method_edit.items() if state != "Cached"}
    assert "train_student[kd, seed 0]" in computed, method_edit
    assert computed <= {"train_student[kd, seed 0]", "evaluate[kd, seed 0]", "aggregate"}, method_edit
    # the training loop runs in the teacher and every student: all of them retrain; the data does not
    loop_edit = flow_runs("kdlib/train.py")[0]["tasks"]
    computed = {name for name, state in loop_edit.items() if state != "Cached"}
    assert {"train_teacher", "train_student[ce, seed 0]", "train_student[kd, seed 0]"} <= computed, loop_edit
    assert loop_edit["prepare_data"] == "Cached"
