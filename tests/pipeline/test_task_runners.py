"""runtime.task_runner: dask runs the study on a 2-worker LocalCluster with the same results
as the sequential thread runner; the study's settings pick the runner."""
import copy
import json

import pytest
import torch

from kdlib import artifacts
from kdlib.config import parse_config
from tests.helpers.project import BIN, flow_env, make_project, mlflow_runs, run
from tests.helpers.study import TINY_STUDY

# Both runners in one process (one temporary Prefect server), each on its own store.
SCRIPT = """
import asyncio, json, sys
from flows.pipeline import kd_pipeline
from tests.helpers.project import task_states

out = {}
for runner, store, extra in (("thread", "store_thread", {}), ("dask", "file://STORE_DASK", {"max_parallel_students": 2})):
    runtime = {"task_runner": runner, "store": store.replace("STORE_DASK", sys.argv[1]), **extra}
    state = kd_pipeline(params_path="params.yaml", overrides={"runtime": runtime}, return_state=True)
    out[runner] = {"ok": state.is_completed(), "summary": state.result()["dir"],
                   "tasks": asyncio.run(task_states(state.state_details.flow_run_id))}
print("RESULT" + json.dumps(out))
"""


def students(store):
    """{(method, seed): state dict} of the students in a store."""
    found = {}
    for manifest in (store / "train_student").glob("*/manifest.json"):
        meta = json.loads(manifest.read_text())["meta"]
        found[meta["method"], meta["seed"]] = artifacts.load_tensors(manifest.parent / "model.pt")
    return found


@pytest.mark.slow
def test_dask_local_cluster_equals_the_thread_runner(tmp_path):
    study = copy.deepcopy(TINY_STUDY)
    study["students"]["seeds"] = [0, 1]
    dest = make_project(tmp_path, study)
    result = run([str(BIN / "python"), "-c", SCRIPT, str(dest / "store_dask")], dest, flow_env(dest), timeout=600)
    out = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    for runner in ("thread", "dask"):
        assert out[runner]["ok"], runner
        # every task is a task run of the one kd-pipeline flow run, whichever runner ran it
        assert {state for _, state in out[runner]["tasks"]} == {"Completed"}, out[runner]["tasks"]
    assert [name for name, _ in out["dask"]["tasks"]] == [name for name, _ in out["thread"]["tasks"]]
    assert len(out["dask"]["tasks"]) == 1 + 1 + 1 + 4 + 4 + 1

    thread, dask = students(dest / "store_thread"), students(dest / "store_dask")
    assert sorted(thread) == sorted(dask) == [("ce", 0), ("ce", 1), ("kd", 0), ("kd", 1)]
    for pair, weights in thread.items():
        for name, tensor in weights.items():
            assert torch.equal(dask[pair][name], tensor), (pair, name)
    summaries = [json.loads((dest / out[r]["summary"] / "summary.json").read_text())["methods"] for r in ("thread", "dask")]
    assert summaries[0] == summaries[1]
    # students training at once in two worker processes each log to their own live MLflow run, under their flow run's parent
    logged = mlflow_runs(dest / "mlflow.db")
    parents = [r for r, v in logged.items() if v["tags"].get("role") == "pipeline"]
    assert len(parents) == 2 and "without MLflow" not in result.stdout + result.stderr
    for parent in parents:
        children = [v for v in logged.values() if v["tags"].get("mlflow.parentRunId") == parent]
        assert sorted(v["name"] for v in children) == ["ce seed 0", "ce seed 1", "kd seed 0", "kd seed 1", "teacher resnet8"]
        assert {v["status"] for v in children} == {"FINISHED"} and logged[parent]["status"] == "FINISHED"


def test_task_runner_picks_the_runner():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import task_runner

    raw = copy.deepcopy(TINY_STUDY)
    assert isinstance(task_runner(parse_config(raw)), ThreadPoolTaskRunner)
    raw["runtime"].update(task_runner="dask", max_parallel_students=3)
    local = task_runner(parse_config(raw))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 3
    assert local.cluster_kwargs["threads_per_worker"] == 1
    assert local.cluster_kwargs["dashboard_address"].startswith("127.0.0.1:")  # never all interfaces
    raw["runtime"] = {"task_runner": "dask", "dask_address": "tcp://10.0.0.1:8786"}
    assert task_runner(parse_config(raw)).address == "tcp://10.0.0.1:8786"
