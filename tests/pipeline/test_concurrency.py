"""Concurrent runs on one project: two real processes building the same artifact (one builds,
the other waits and reuses it); two flow runs and a `dvc repro` at once."""
import copy
import os
import subprocess
import sys

import pytest
import yaml

from kdlib import artifacts

from tests.helpers.project import BIN, free_port, make_project, project_env, start_prefect_server, stop
from tests.helpers.study import TINY_STUDY

pytestmark = pytest.mark.slow

SCRIPT = """
import os, sys, time
from pathlib import Path
from kdlib.config import load_config
from tasks import cache_logits, prepare_data, train_student, train_teacher
cfg = load_config("params.yaml")
data = prepare_data.cached(cfg)
teacher = train_teacher.cached(cfg, data)
logits = cache_logits.cached(cfg, data, teacher)
train_student.key(cfg, "kd", 0, data, logits)  # the code identity is read before the gate, not in the race
print("START", flush=True)
while os.environ.get("GATE") and not Path(os.environ["GATE"]).exists():
    time.sleep(0.02)
manifest = train_student.cached(cfg, "kd", 0, data, logits)
print("DONE", manifest["dir"], flush=True)
"""


def test_two_processes_never_build_the_same_artifact_at_once(tmp_path):
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["schedule"]["epochs"] = 6
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "run.py").write_text(SCRIPT)
    # build the shared upstream artifacts first, so the race is on the student
    subprocess.run([sys.executable, "-c", SCRIPT.replace('"kd", 0', '"ce", 0')], cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)

    # The second process is imported and waiting at its gate before the first starts training;
    # the gate opens once the first has finished an epoch, so it meets the held lock
    # however slow this machine's process start-up is.
    gate = tmp_path / "gate"
    second = subprocess.Popen([sys.executable, "run.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "GATE": str(gate)})
    first = subprocess.Popen([sys.executable, "run.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    first_lines = []
    for line in first.stdout:
        first_lines.append(line)
        if "kd seed 0 epoch 1/6" in line:
            gate.touch()
            break
    gate.touch()
    outputs = ["".join(first_lines) + first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]]
    procs = [first, second]
    assert all(p.returncode == 0 for p in procs), outputs
    trained = [o for o in outputs if "kd seed 0 epoch 6/6" in o]
    reused = [o for o in outputs if "train_student: reusing" in o]
    assert len(trained) == 1 and len(reused) == 1, outputs
    assert "waiting for" in reused[0]
    dirs = {line.split()[1] for o in outputs for line in o.splitlines() if line.startswith("DONE")}
    assert len(dirs) == 1
    assert artifacts.is_complete(tmp_path / dirs.pop())


# What each step prints when it builds its artifact (a reuse prints "<step>: reusing" instead).
BUILDS = (
    "prepare_data: digits-s0,", "teacher resnet8 epoch 1/1", "cache_logits epoch 2/2",
    "kd seed 0 epoch 2/2", "evaluate kd seed 0:", "aggregate: results table in",
)
FLOW = "from flows.pipeline import kd_pipeline; kd_pipeline(params_path='params.yaml')"


def test_two_flow_runs_and_a_dvc_repro_at_once(tmp_path):
    """Two flow runs against one Prefect server and a `dvc repro`, all started together on one
    project: every run succeeds, each front door builds each artifact once, and the teacher
    (one key, one checkpoint lock for both front doors) is bit-identical in both."""
    study = copy.deepcopy(TINY_STUDY)
    study["students"]["methods"], study["methods"] = ["kd"], {"kd": {}}  # one student: every step, less time
    dest = make_project(tmp_path, study)
    port = free_port()
    env = project_env(dest, PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    server = start_prefect_server(dest, env, port, tmp_path / "server.log")
    try:
        commands = {"flow1": [str(BIN / "python"), "-c", FLOW], "flow2": [str(BIN / "python"), "-c", FLOW],
                    "dvc": [str(BIN / "dvc"), "repro"]}
        procs = {name: subprocess.Popen(cmd, cwd=dest, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True) for name, cmd in commands.items()}
        outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    finally:
        stop(server)
    assert all(proc.returncode == 0 for proc in procs.values()), {n: o[-3000:] for n, o in outputs.items()}

    flows = outputs["flow1"] + outputs["flow2"]
    for marker in BUILDS:
        assert flows.count(marker) == 1, (marker, flows[-4000:])
        assert outputs["dvc"].count(marker) == 1, (marker, outputs["dvc"][-4000:])
    tables = {line.split("results table: ")[1] for line in flows.splitlines() if "results table: " in line}
    assert len(tables) == 1

    store = dest / ".kdflow/store"
    folders = {step.name: [p for p in step.iterdir() if p.is_dir()] for step in store.iterdir() if step.is_dir()}
    expected = {"prepare_data": 1, "train_teacher": 1, "cache_logits": 1, "train_student": 1, "evaluate": 1, "aggregate": 1}
    assert {step: len(folders[step]) for step in expected} == expected
    assert all(artifacts.is_complete(p) for step in expected for p in folders[step])
    dvc_folders = [m.parent for m in (dest / "artifacts").rglob("manifest.json")]
    assert len(dvc_folders) >= 5 and all(artifacts.is_complete(p) for p in dvc_folders)
    teacher = next(store.glob("train_teacher/*/model.pt"))
    assert teacher.read_bytes() == (dest / "artifacts/teacher/model.pt").read_bytes()
