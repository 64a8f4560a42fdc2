"""Live MLflow runs (tasks.tracking): one run per computed step while it trains, with real durations and
statuses, nested under one parent per pipeline run; a cached step is linked, never logged twice."""
import copy
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from kdlib.config import parse_config
from tasks import tracking
from tests.helpers.project import BIN, make_project, mlflow_runs, project_env, ran_stages, run
from tests.helpers.study import TINY_STUDY


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = copy.deepcopy(TINY_STUDY)
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    return parse_config(raw)


def test_a_step_run_ends_finished_failed_or_killed(cfg, tmp_path):
    parent = tracking.start_parent(cfg, "dvc", {}, source="dvc.yaml")
    started = time.time()
    with tracking.step_run(cfg, parent, "train_student", "k1", "ok", {"method": "kd"}, {"role": "student"}) as live:
        live.epoch({"epoch": 1, "loss": 1.0, "nc/aux_head_nc3": float("nan"), "grad_cos/head/a_vs_b": None})
        live.final({"top1": 50.0, "nc/aux_head_nc3": None})
        live.done()
        done = time.time()
        time.sleep(0.3)  # logging after `done` is not the step's time
    with tracking.step_run(cfg, parent, "train_student", "k2", "diverged", {}, {}) as live:
        live.fail("loss term(s) ['kd'] became non-finite at epoch 1")
    with pytest.raises(ValueError), tracking.step_run(cfg, parent, "train_student", "k3", "crashed", {}, {}):
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), tracking.step_run(cfg, parent, "train_student", "k4", "interrupted", {}, {}):
        raise KeyboardInterrupt
    tracking.finish_parent(cfg, parent)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(cfg))
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], f"tags.mlflow.parentRunId = '{parent}'")}
    assert {name: r.info.status for name, r in runs.items()} == {
        "ok": "FINISHED", "diverged": "FAILED", "crashed": "FAILED", "interrupted": "KILLED"}
    ok = runs["ok"]
    # the run ended at `done`: its duration is within the time until then, whatever the machine's load
    assert ok.info.end_time - ok.info.start_time <= (done - started) * 1000 + 2 and ok.data.params == {"method": "kd"}
    assert ok.data.metrics == {"epoch/loss": 1.0, "final/top1": 50.0}  # undefined values are left out, never 0 or NaN
    assert ok.data.tags["mlflow.source.name"] == "tasks/train_student.py" and ok.data.tags["artifact_key"] == "k1"
    assert "non-finite" in runs["diverged"].data.tags["error"] and runs["crashed"].data.tags["error"] == "ValueError: boom"
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_without_a_parent_or_with_tracking_off_nothing_is_logged(cfg, tmp_path):
    off = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})})
    assert tracking.start_parent(off, "dvc", {}, "dvc.yaml") is None
    with tracking.step_run(cfg, None, "train_student", "k", "x", {}, {}) as live:
        live.epoch({"epoch": 1, "loss": 1.0})
    assert not live and not (tmp_path / "mlflow.db").exists()


def test_mlflow_failing_never_stops_the_step(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    raw = copy.deepcopy(TINY_STUDY)
    raw["tracking"]["uri"] = "http://127.0.0.1:9"  # nothing listens there
    cfg = parse_config(raw)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with tracking.step_run(cfg, "0" * 32, "train_student", "k", "x", {}, {}) as live:
        live.epoch({"epoch": 1, "loss": 1.0})
    assert not live and "the step goes on without MLflow" in capsys.readouterr().err


# The DVC front door, on a study whose students train long enough (seconds) for their runs' durations to mean something.
TIMED = copy.deepcopy(TINY_STUDY)
TIMED["data"] = {"source": "synthetic", "seed": 0, "train_per_class": 30, "test_per_class": 10, "image_size": 8}
TIMED["students"].update(arch="resnet8", schedule={"epochs": 3, "batch_size": 64, "lr": 0.05})


def trained_seconds(output: str) -> dict[str, float]:
    """`<method> seed <s>` -> the training time the step's log reports."""
    return {f"{m} seed {s}": float(t) for m, s, t in
            re.findall(r"train_student (\S+) seed (\d+): trained \d+ epoch\(s\) in ([\d.]+) s", output)}


def children(runs: dict, parent: str) -> dict[str, dict]:
    return {r["name"]: {"id": run_id, **r} for run_id, r in runs.items() if r["tags"].get("mlflow.parentRunId") == parent}


@pytest.mark.slow
def test_dvc_runs_are_live_timed_and_never_duplicated(tmp_path):
    dest = make_project(tmp_path / "p", TIMED)
    env = project_env(dest)
    first = run([str(BIN / "dvc"), "repro"], dest, env, timeout=600).stdout
    runs = mlflow_runs(dest / "mlflow.db")
    (parent, _), = [(r, v) for r, v in runs.items() if v["tags"].get("role") == "pipeline"]
    tree = children(runs, parent)
    assert set(tree) == {"teacher resnet8", "ce seed 0", "kd seed 0"}
    seconds = trained_seconds(first)
    assert set(seconds) == {"ce seed 0", "kd seed 0"}
    for name, trained in seconds.items():  # the run lasted as long as the step trained (+ writing its artifact)
        duration = (tree[name]["end"] - tree[name]["start"]) / 1000
        assert abs(duration - trained) <= 0.2 * trained, (name, duration, trained)

    # nothing changed: DVC runs no stage, and MLflow gets no new run (no duplicate tree)
    assert ran_stages(run([str(BIN / "dvc"), "repro"], dest, env).stdout) == set()
    assert mlflow_runs(dest / "mlflow.db").keys() == runs.keys()

    # one changed method: a new parent with its one new student; the untouched steps link to their original runs
    changed = copy.deepcopy(TIMED)
    changed["methods"]["kd"] = {"temperature": 2.0}
    (dest / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    run([str(BIN / "dvc"), "repro"], dest, env, timeout=600)
    after = mlflow_runs(dest / "mlflow.db")
    new_parent = next(r for r, v in after.items() if v["tags"].get("role") == "pipeline" and r != parent)
    assert after[new_parent]["name"] != after[parent]["name"] and after[new_parent]["status"] == "FINISHED"
    assert set(children(after, new_parent)) == {"kd seed 0"}
    links = {k.removeprefix("reused/"): json.loads(v) for k, v in after[new_parent]["tags"].items() if k.startswith("reused/")}
    assert {name: link["run_id"] for name, link in links.items()} == {
        "teacher resnet8": tree["teacher resnet8"]["id"], "ce seed 0": tree["ce seed 0"]["id"]}
    assert links["ce seed 0"]["artifact_key"] == json.loads(
        (dest / "artifacts/students/ce/seed0/manifest.json").read_text())["key"]

    # a new evaluation of cached students: on runs of its own under the new parent, naming the students' runs
    changed["evaluation"]["ece_bins"] = 10
    (dest / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    assert not {s for s in ran_stages(run([str(BIN / "dvc"), "repro"], dest, env, timeout=600).stdout)
                if s.startswith("train_")}
    final = mlflow_runs(dest / "mlflow.db")
    third = next(r for r, v in final.items() if v["tags"].get("role") == "pipeline" and r not in (parent, new_parent))
    evaluations = children(final, third)
    assert set(evaluations) == {"ce seed 0 (evaluation)", "kd seed 0 (evaluation)"}
    assert evaluations["ce seed 0 (evaluation)"]["tags"]["student_run_id"] == tree["ce seed 0"]["id"]


SIGTERMED = """
import sys, time
from kdlib.config import load_config
from tasks import tracking
cfg = load_config("params.yaml")
with tracking.dvc_pipeline(cfg) as parent:
    with tracking.step_run(cfg, parent, "train_student", "k", "ce seed 0", {}, {"role": "student"}) as live:
        print("TRAINING", flush=True)
        time.sleep(60)
"""


@pytest.mark.slow
def test_a_terminated_dvc_stage_ends_its_runs_killed(tmp_path):
    """SIGTERM (what `dvc` and process managers send) ends the step's run and the repro's parent KILLED,
    and the next `dvc repro` starts a new parent."""
    dest = make_project(tmp_path / "p", TINY_STUDY)
    proc = subprocess.Popen([sys.executable, "-c", SIGTERMED], cwd=dest, env=project_env(dest), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    while "TRAINING" not in proc.stdout.readline():
        assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    runs = mlflow_runs(dest / "mlflow.db")
    assert sorted((r["name"].split(" 20")[0], r["status"]) for r in runs.values()) == [("ce seed 0", "KILLED"), ("tiny", "KILLED")]
    assert not (dest / ".kdflow/mlflow/dvc-parent.json").exists()


def test_a_stop_signal_ends_training_at_the_next_epoch():
    """SIGTERM to a flow run (make serve stopping, a cancellation) reaches the training thread as
    StopRequested at its next epoch, so its run ends KILLED instead of the process being killed mid-run."""
    import os

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # stands for Prefect's bridge
    try:
        with tracking.stop_on_signals():
            tracking.StepRun().epoch({"epoch": 1, "loss": 1.0}, {"epoch": 1, "train_seconds": 0.1})  # not asked yet
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == [signal.SIGTERM] and tracking.STOP.is_set()
            tracking.StepRun().epoch({"epoch": 1, "loss": 1.0}, None)  # a resumed epoch replayed: no training to stop
            with pytest.raises(tracking.StopRequested):
                tracking.StepRun().epoch({"epoch": 2, "loss": 1.0}, {"epoch": 2, "train_seconds": 0.1})
        assert tracking.status_of(tracking.StopRequested()) == "KILLED"
        with tracking.stop_on_signals():
            assert not tracking.STOP.is_set()  # the next run in this process trains
    finally:
        signal.signal(signal.SIGTERM, previous)
        tracking.STOP.clear()
