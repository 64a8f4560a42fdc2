"""The DVC front door: `dvc repro` runs the DAG; one changed method setting re-runs only its stages."""
import copy
import json
import re
import sqlite3

import pytest
import yaml

from tests.conftest import TINY_STUDY
from tests.project import BIN, make_project, project_env, run

pytestmark = pytest.mark.slow


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = make_project(tmp_path_factory.mktemp("dvc"), TINY_STUDY)
    env = project_env(dest)
    first = run([str(BIN / "dvc"), "repro"], dest, env, timeout=400)
    return dest, env, first.stdout


def test_first_repro_runs_every_stage(project):
    dest, env, output = project
    assert ran_stages(output) == {
        "prepare_data", "train_teacher", "cache_logits",
        "train_student@ce-0", "train_student@kd-0", "evaluate@ce-0", "evaluate@kd-0", "aggregate",
    }
    summary = json.loads((dest / "results/summary.json").read_text())
    assert {row["method"] for row in summary["methods"]} == {"ce", "kd"}
    assert (dest / "results/summary.csv").read_text().startswith("method,")
    assert "| kd |" in (dest / "results/summary.md").read_text()
    assert sorted(p.name for p in (dest / "results/curves").iterdir()) == ["ce.json", "kd.json"]


def test_mlflow_run_tree(project):
    dest, _, _ = project
    db = sqlite3.connect(dest / "mlflow.db")
    runs = db.execute("select run_uuid, name from runs").fetchall()
    parents = dict(db.execute("select run_uuid, value from tags where key = 'mlflow.parentRunId'").fetchall())
    roots = [r for r, _ in runs if r not in parents]
    assert len(roots) == 1
    children = {name for r, name in runs if parents.get(r) == roots[0]}
    assert children == {"teacher resnet8", "ce seed 0", "kd seed 0"}
    kd_run = next(r for r, name in runs if name == "kd seed 0")
    steps = db.execute("select step from metrics where run_uuid = ? and key = 'loss/kd' order by step", (kd_run,)).fetchall()
    assert [s for (s,) in steps] == [1, 2]
    params = dict(db.execute("select key, value from params where run_uuid = ?", (kd_run,)).fetchall())
    assert params["method"] == "kd" and params["settings.temperature"] == "4.0"


def test_no_change_reruns_nothing(project):
    dest, env, _ = project
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    assert ran_stages(output) == set()


def test_changing_one_method_reruns_only_its_students_and_the_aggregate(project):
    dest, env, _ = project
    model = dest / "artifacts/students/kd/seed0/model.pt"
    before = model.read_bytes()
    changed = copy.deepcopy(TINY_STUDY)
    changed["methods"]["kd"] = {"temperature": 2.0}
    (dest / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    assert ran_stages(output) == {"train_student@kd-0", "evaluate@kd-0", "aggregate"}
    assert model.read_bytes() != before

    # reverting brings back the earlier artifacts from DVC's run-cache instead of retraining
    (dest / "params.yaml").write_text(yaml.safe_dump(TINY_STUDY, sort_keys=False))
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    assert "train_student@kd-0" not in ran_stages(output)
    assert model.read_bytes() == before


def test_bad_params_stop_before_anything_runs(project, tmp_path):
    dest, env, _ = project
    bad = copy.deepcopy(TINY_STUDY)
    bad["students"]["schedule"]["epoch"] = 3
    params = tmp_path / "bad.yaml"
    params.write_text(yaml.safe_dump(bad))
    result = __import__("subprocess").run(
        [str(BIN / "python"), "-m", "tasks.prepare_data", "--params", str(params)],
        cwd=dest, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "students.schedule.epoch: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
