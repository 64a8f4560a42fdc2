"""`make serve` and `make ui` stop within 10 s on Ctrl-C or SIGTERM, leaving no process behind."""
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import psutil
import pytest
import yaml

from tests.helpers.project import BIN, ROOT, free_port, make_project, mlflow_runs, project_env, wait_for
from tests.helpers.study import TINY_STUDY

pytestmark = pytest.mark.slow


def start_make(dest, target: str, port: int, log) -> subprocess.Popen:
    """`make <target>` in the copy, in its own process group (as a terminal's foreground job is);
    `-o .venv/.installed`: the copy's .venv is the suite's, never reinstalled."""
    var = "PORT_PREFECT" if target == "serve" else "PORT_MLFLOW"
    return subprocess.Popen(["make", "-o", ".venv/.installed", target, f"{var}={port}"], cwd=dest,
                            env=project_env(dest), start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def tree(proc: subprocess.Popen) -> list[psutil.Process]:
    return [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]


def gone_within(processes: list[psutil.Process], seconds: float) -> tuple[float, list[psutil.Process]]:
    """(seconds until every process exited, the ones still alive then)."""
    started = time.time()
    while time.time() - started < seconds:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return time.time() - started, []
        time.sleep(0.1)
    return seconds, [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = make_project(tmp_path_factory.mktemp("servers"), TINY_STUDY)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    # the smoke deployment's teacher trains long enough to be stopped in the middle
    smoke = dest / "studies/smoke.yaml"
    study = yaml.safe_load(smoke.read_text())
    study["teacher"]["schedule"]["epochs"] = 200
    smoke.write_text(yaml.safe_dump(study, sort_keys=False))
    return dest


def api(base: str, path: str, body: dict) -> list:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("how", ["ctrl-c during a flow run", "sigterm"])
def test_make_serve_stops_within_10s(project, how, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    with open(tmp_path / "serve.log", "w") as log:
        make = start_make(project, "serve", port, log)
        try:
            wait_for(f"{base}/health", 120)
            deadline = time.time() + 90
            while len(api(base, "/deployments/filter", {})) < 2 and time.time() < deadline:
                time.sleep(1)
            if how.startswith("ctrl-c"):
                env = project_env(project, PREFECT_API_URL=base)
                subprocess.run([str(BIN / "prefect"), "deployment", "run", "kd-pipeline/smoke"], cwd=project, env=env,
                               check=True, capture_output=True, timeout=60)
                deadline = time.time() + 120  # until the teacher trains, its MLflow run live
                while "teacher resnet8 epoch 3/200" not in (tmp_path / "serve.log").read_text():
                    assert time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                    time.sleep(0.3)
            processes = tree(make)
            assert len(processes) >= 4, processes  # make, the supervisor, the server, the runner (and a flow run)
            if how.startswith("ctrl-c"):
                os.killpg(make.pid, signal.SIGINT)  # the terminal signals its foreground process group
            else:
                make.send_signal(signal.SIGTERM)
            seconds, alive = gone_within(processes, 10)
            assert not alive, (alive, (tmp_path / "serve.log").read_text()[-3000:])
            print(f"make serve ({how}): {len(processes)} processes gone in {seconds:.1f} s")
            if how.startswith("ctrl-c"):  # the stopped flow run stopped its training: no MLflow run stays RUNNING
                statuses = {(r["name"], r["status"]) for r in mlflow_runs(project / "mlflow.db").values()}
                assert ("teacher resnet8", "KILLED") in statuses and not {s for _, s in statuses} & {"RUNNING"}, statuses
        finally:
            for p in tree(make) if make.poll() is None else []:
                p.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_make_ui_stops_within_10s(project, sig, tmp_path):
    port = free_port()
    with open(tmp_path / "ui.log", "w") as log:
        make = start_make(project, "ui", port, log)
        try:
            wait_for(f"http://127.0.0.1:{port}/health", 120)
            processes = tree(make)
            if sig == signal.SIGINT:
                os.killpg(make.pid, sig)
            else:
                make.send_signal(sig)
            seconds, alive = gone_within(processes, 10)
            assert not alive, (alive, (tmp_path / "ui.log").read_text()[-3000:])
            print(f"make ui ({sig.name}): {len(processes)} processes gone in {seconds:.1f} s")
        finally:
            for p in tree(make) if make.poll() is None else []:
                p.kill()
