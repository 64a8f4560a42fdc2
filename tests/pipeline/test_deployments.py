"""End to end: a real local Prefect server, `flows.serve`, and `prefect deployment run`."""
import json
import re
import subprocess
import time
import urllib.request

import pytest

from tests.helpers.project import BIN, free_port, make_project, project_env, start_prefect_server, stop
from tests.helpers.study import TINY_STUDY

pytestmark = pytest.mark.slow


def api(base: str, path: str, body: dict) -> list:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    dest = make_project(tmp_path_factory.mktemp("deploy"), TINY_STUDY)
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = project_env(dest, PREFECT_API_URL=base)
    logs = dest / "logs"
    logs.mkdir()
    procs = [start_prefect_server(dest, env, port, logs / "server.log")]
    try:
        procs.append(subprocess.Popen([str(BIN / "python"), "-m", "flows.serve"], cwd=dest, env=env,
                                      stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT))
        deadline = time.time() + 90
        while len(api(base, "/deployments/filter", {})) < 2 and time.time() < deadline:
            time.sleep(1)
        yield dest, env, base
    finally:
        for proc in reversed(procs):
            stop(proc)


def deployment_run(dest, env, *args: str) -> str:
    """Trigger a run, wait for it, return its flow-run id."""
    result = subprocess.run([str(BIN / "prefect"), "deployment", "run", "kd-pipeline/smoke", "--watch", *args],
                            cwd=dest, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr + (dest / "logs/serve.log").read_text()[-3000:]
    return re.search(r"UUID:\s*([0-9a-f-]{36})", result.stdout).group(1)


def task_states(base: str, flow_run_id: str) -> dict[str, str]:
    """Task runs of the flow run's `kd-study` subflow, where the study's tasks run."""
    subflows = api(base, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
    runs = api(base, "/task_runs/filter", {"flow_runs": {"id": {"any_": [r["id"] for r in subflows]}}})
    return {r["name"]: r["state"]["name"] for r in runs}


def test_both_deployments_are_served(server):
    _, _, base = server
    names = {d["name"] for d in api(base, "/deployments/filter", {})}
    assert names == {"default", "smoke"}


def artifacts(base: str, flow_run_id: str) -> dict[str, dict]:
    return {a["key"]: a for a in api(base, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})}


def test_deployment_run_then_cached_retrigger_then_override(server):
    dest, env, base = server
    first_run = deployment_run(dest, env)
    first = task_states(base, first_run)
    assert set(first.values()) == {"Completed"}, first
    assert {"train_student[ce, seed 0]", "train_student[kd, seed 0]", "train_student[dhkd, seed 0]"} <= set(first)
    # the deployment's flow run publishes its results table and the link to its MLflow parent run
    published = artifacts(base, first_run)
    assert "| dhkd |" in published["kd-results"]["data"] and "workflowType=machine_learning" in published["mlflow-parent-run"]["data"]

    second_run = deployment_run(dest, env)
    second = task_states(base, second_run)
    assert set(second.values()) == {"Cached"}, second
    assert set(artifacts(base, second_run)) == {"kd-results", "mlflow-parent-run"}  # a cached run publishes too

    third = task_states(base, deployment_run(dest, env, "--params", json.dumps({"methods": ["ce"], "seeds": [1]})))
    assert third["train_student[ce, seed 1]"] == "Completed"
    assert third["train_teacher"] == "Cached" and third["cache_logits"] == "Cached"
    assert not any(name.startswith("train_student[kd") for name in third)
