"""The LM study through both front doors (issue 13's bar): a token study runs through `dvc repro` and
the flow; a second run recomputes nothing; changing one method re-runs only its students.

One throw-away project on TINY_LM_STUDY: the DVC tests run in order on its params.yaml; the flow runs
the same study from its own file (tiny-lm.yaml), so it is the same study whatever params.yaml holds."""
import copy
import json

import pytest
import yaml

from tests.helpers.project import BIN, flow_env, make_project, project_env, ran_stages, run
from tests.helpers.study import TINY_LM_STUDY

pytestmark = pytest.mark.slow

# MLflow off: its import and run bookkeeping in every stage process add half again to the module's time
# (the MLflow run tree of both front doors is tested on the image study, test_dvc_front_door.py and
# test_prefect_flow.py)
STUDY = copy.deepcopy(TINY_LM_STUDY)
STUDY["tracking"]["enabled"] = False

STAGES = {
    "check_study", "prepare_data", "train_teacher", "cache_logits",
    "train_student@ce-0", "train_student@kd-0", "evaluate@ce-0", "evaluate@kd-0", "aggregate",
}
TASKS = [
    "aggregate", "cache_logits", "evaluate[ce, seed 0]", "evaluate[kd, seed 0]",
    "prepare_data", "train_student[ce, seed 0]", "train_student[kd, seed 0]", "train_teacher",
]

# Two flow runs of the same study in one process (one temporary Prefect server), each run's task states.
FLOW = """
import asyncio, json
from flows.pipeline import kd_pipeline
from tests.helpers.project import task_states

out = []
for _ in range(2):
    state = kd_pipeline(params_path="tiny-lm.yaml", return_state=True)
    out.append({"ok": state.is_completed(), "summary": state.result()["dir"],
                "tasks": asyncio.run(task_states(state.state_details.flow_run_id))})
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = make_project(tmp_path_factory.mktemp("lm"), STUDY)
    (dest / "tiny-lm.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    env = project_env(dest)
    first = run([str(BIN / "dvc"), "repro"], dest, env, timeout=400)
    return dest, env, first.stdout


def test_first_repro_runs_every_stage_and_reports_perplexity(project):
    dest, _, output = project
    assert ran_stages(output) == STAGES
    val_ppl = {}
    for method in ("ce", "kd"):
        metrics = json.loads((dest / f"artifacts/evaluations/{method}/seed0/metrics.json").read_text())
        assert metrics["method"] == method
        # perplexities of a trained model: above 1, and not far worse than uniform over V = 300
        assert 1.0 < metrics["val_ppl"] < 300 * 10 and 1.0 < metrics["ppl"] < 300 * 10
        val_ppl[method] = metrics["val_ppl"]
    summary = json.loads((dest / "results/summary.json").read_text())
    rows = {row["method"]: row for row in summary["methods"]}
    assert set(rows) == {"ce", "kd"}
    for method, row in rows.items():  # the table's validation perplexity; one seed: the mean is the student's own
        assert row["val_ppl_mean"] == pytest.approx(val_ppl[method]), row


def test_second_repro_runs_nothing(project):
    dest, env, _ = project
    assert ran_stages(run([str(BIN / "dvc"), "repro"], dest, env).stdout) == set()


def test_changing_one_method_reruns_only_its_students_and_the_aggregate(project):
    dest, env, _ = project
    model = dest / "artifacts/students/kd/seed0/model.pt"
    untouched = dest / "artifacts/students/ce/seed0/model.pt"
    before, ce_before = model.read_bytes(), untouched.read_bytes()
    changed = copy.deepcopy(STUDY)
    changed["methods"]["kd"] = {"temperature": 2.0}
    (dest / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    assert ran_stages(output) == {"check_study", "train_student@kd-0", "evaluate@kd-0", "aggregate"}
    assert model.read_bytes() != before and untouched.read_bytes() == ce_before


@pytest.fixture(scope="module")
def flow_runs(project):
    dest, env, _ = project
    result = run([str(BIN / "python"), "-c", FLOW], dest, flow_env(dest), timeout=400)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return dest, json.loads(line[len("RESULT"):])


def test_the_flow_runs_the_study_then_caches_every_task(flow_runs):
    dest, (first, second) = flow_runs
    assert first["ok"] and second["ok"]
    assert sorted(name for name, _ in first["tasks"]) == TASKS
    assert {state for _, state in first["tasks"]} == {"Completed"}, first["tasks"]
    assert sorted(name for name, _ in second["tasks"]) == TASKS
    assert {state for _, state in second["tasks"]} == {"Cached"}, second["tasks"]
    assert second["summary"] == first["summary"]
    summary = json.loads((dest / first["summary"] / "summary.json").read_text())
    assert {row["method"] for row in summary["methods"]} == {"ce", "kd"}
