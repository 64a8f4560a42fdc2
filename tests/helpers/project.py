"""Helpers for end-to-end tests: a throw-away copy of the project with a tiny study."""
from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def make_project(dest: Path, study: dict) -> Path:
    """Copy the code, dvc.yaml and studies into `dest`, write `study` as params.yaml, init git + DVC."""
    for name in ("kdlib", "tasks", "flows", "studies"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    shutil.copy(ROOT / ".dvcignore", dest / ".dvcignore")
    (dest / ".venv").symlink_to(sys.prefix)  # dvc.yaml's stages run .venv/bin/python
    (dest / "params.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    (dest / ".kdflow" / "prefect").mkdir(parents=True)
    (dest / "data").mkdir()  # the prepare_data stage depends on data/ (git keeps its README)
    shutil.copy(ROOT / "data" / "README.md", dest / "data" / "README.md")
    env = project_env(dest)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=dest, check=True, env=env)
    return dest


def project_env(dest: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        # the copy's code first; the suite's own helpers (tests.helpers.project) after it, for the scripts
        PYTHONPATH=os.pathsep.join([str(dest), str(ROOT)]),
        PREFECT_HOME=str(dest / ".kdflow" / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
    )
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


_SHARED_PREFECT: dict[str, str] = {}


def flow_env(dest: Path, **extra: str) -> dict[str, str]:
    """`project_env` for a process that runs the flow: it talks to this test process's shared
    Prefect server (`shared_prefect_api`) instead of starting a temporary one of its own."""
    return project_env(dest, **{"PREFECT_API_URL": shared_prefect_api(), **extra})


def shared_prefect_api() -> str:
    """The API of one real Prefect server per test process (an xdist worker), started on first
    use and stopped at exit. A flow run in a process of its own would otherwise start a
    temporary server and migrate its fresh database: ~10 s each, many times per suite. Flow
    runs, task runs and result-storage blocks are per project (each project's store path names
    its block), so tests sharing the server do not see each other's state."""
    if "url" not in _SHARED_PREFECT:
        home = Path(tempfile.mkdtemp(prefix="kdflow-test-prefect-"))
        port = free_port()
        (home / ".kdflow" / "prefect").mkdir(parents=True)  # its PREFECT_HOME (project_env), where its database goes
        env = {k: v for k, v in project_env(home).items() if k != "PYTHONPATH"}
        proc = start_prefect_server(home, env, port, home / "server.log")
        atexit.register(shutil.rmtree, home, True)
        atexit.register(stop, proc)
        _SHARED_PREFECT["url"] = f"http://127.0.0.1:{port}/api"
    return _SHARED_PREFECT["url"]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ran_stages(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def start_prefect_server(dest: Path, env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """A real Prefect server on 127.0.0.1:`port` (SQLite under the project's PREFECT_HOME), once it answers."""
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=dest, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/api/health", 120)
    except AssertionError:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def study_task_runs(flow_run_id) -> list:
    """Every task run of a `kd-pipeline` flow run: those of its `kd-study` subflow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        subflows = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [run.id for run in subflows]
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))


async def task_states(flow_run_id) -> list[tuple[str, str]]:
    """(name, state) of every task run of a `kd-pipeline` flow run (`study_task_runs`), sorted."""
    return sorted((run.name, run.state.name) for run in await study_task_runs(flow_run_id))


async def flow_run_artifacts(flow_run_id) -> dict[str, dict]:
    """The Prefect artifacts of one flow run, by key: {"type", "data", "description"}."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: {"type": a.type, "data": a.data, "description": a.description} for a in found}


def mlflow_runs(db_path: Path) -> dict[str, dict]:
    """Every run of a project's MLflow SQLite store: {run id: {"name", "status", "start", "end", "experiment", "tags"}}."""
    import sqlite3

    db = sqlite3.connect(db_path)
    runs = {r: {"name": n, "status": s, "start": t0, "end": t1, "experiment": str(e), "tags": {}}
            for r, n, s, t0, t1, e in db.execute("select run_uuid, name, status, start_time, end_time, experiment_id from runs")}
    for run, key, value in db.execute("select run_uuid, key, value from tags"):
        runs[run]["tags"][key] = value
    db.close()
    return runs
