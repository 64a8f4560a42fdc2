"""The local servers of `make serve` and `make ui`: started together, stopped in order within seconds.

    python -m flows.servers prefect --port 4200     # a Prefect server, then the process serving the deployments
    python -m flows.servers mlflow --port 5000      # the MLflow UI on the project's store (mlflow.db, mlruns/)

Each server runs in its own session, so Ctrl-C in the terminal reaches this supervisor only,
which then stops what it started, in order, on SIGINT or SIGTERM alike: the deployment
runner first (it pauses its deployments through the API, so the API must still be up; a
runner outliving its server retries for a minute and more), then the server. The processes
a server started get SIGTERM first (a flow run then stops its training at the epoch's end
and ends its MLflow runs KILLED); then the server's whole process group gets SIGINT, SIGTERM
and SIGKILL, within its share of `STOP_SECONDS`, and whatever is left (a process in a
session of its own too) SIGKILL.
Nothing is left behind and the supervisor exits within ten seconds.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import psutil

STOP_SECONDS = 8.0
"""Time to stop everything; `make serve` / `make ui` promise ten seconds."""


class Stop(Exception):
    """SIGINT or SIGTERM arrived: stop everything."""


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


class Child:
    """One server process, in a session (and process group) of its own."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, env=env, start_new_session=True)
        self.seen: set[psutil.Process] = set()

    def remember(self) -> None:
        """Note every descendant now, so one that leaves the group (a new session) is still found."""
        try:
            self.seen.update(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.Error:
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, seconds: float) -> None:
        """Within `seconds`: SIGTERM to the processes it started (a flow run ends its training
        and its MLflow runs KILLED on it), then SIGINT, SIGTERM and SIGKILL to its process
        group, then SIGKILL to whatever is left (in a session of its own too)."""
        began = time.time()
        self.remember()
        started = [p for p in self.seen if p.is_running()]
        for process in started:
            with _quiet():
                process.terminate()
        if started:
            psutil.wait_procs(started, timeout=seconds * 0.4)
            seconds *= 0.6
        steps = ((signal.SIGINT, 0.6), (signal.SIGTERM, 0.3), (signal.SIGKILL, 0.1))
        for sig, share in steps:
            if not self.alive():
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=max(seconds * share, 0.2))
            except subprocess.TimeoutExpired:
                continue
        self.proc.poll()
        with _quiet():
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its group outlived it
        for straggler in self.seen:
            with _quiet():
                straggler.kill()
        psutil.wait_procs(list(self.seen), timeout=1)
        print(f"stopped {self.name} in {time.time() - began:.1f} s", file=sys.stderr, flush=True)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, err: BaseException | None, tb: object) -> bool:
        return kind is not None and issubclass(kind, (ProcessLookupError, PermissionError, psutil.Error))


def wait_healthy(url: str, child: Child, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not child.alive():
            raise SystemExit(f"{child.name} exited ({child.proc.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f}s")


def run(start: Callable[[list[Child]], None]) -> int:
    """Start the servers (`start` appends each child once it is up), wait until a signal or
    a child's exit, then stop every child, the last started first. Returns the exit code."""
    children: list[Child] = []
    code = 0
    try:
        start(children)
        while all(child.alive() for child in children):
            for child in children:
                child.remember()
            time.sleep(0.5)
        code = 1  # a server stopped by itself
        print(f"{next(c.name for c in children if not c.alive())} exited; stopping the rest", file=sys.stderr)
    except Stop:
        pass
    finally:
        # a second Ctrl-C must not cut the stopping short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):
            child.stop(STOP_SECONDS / max(len(children), 1))
    return code


def prefect(port: int) -> int:
    env = dict(os.environ, PREFECT_API_URL=f"http://127.0.0.1:{port}/api")

    def start(children: list[Child]) -> None:
        children.append(Child("prefect server", [sys.executable, "-m", "prefect", "server", "start",
                                                 "--host", "127.0.0.1", "--port", str(port)], env))
        wait_healthy(f"http://127.0.0.1:{port}/api/health", children[0], 120)
        children.append(Child("deployments", [sys.executable, "-m", "flows.serve"], env))

    return run(start)


def mlflow(port: int, store: str, artifacts: str) -> int:
    # without this, the server's job consumers outlive it (stack.md)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")

    def start(children: list[Child]) -> None:
        children.append(Child("mlflow server", [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                                                "--default-artifact-root", artifacts, "--host", "127.0.0.1",
                                                "--port", str(port), "--workers", "1"], env))
        wait_healthy(f"http://127.0.0.1:{port}/health", children[0], 120)
        print(f"MLflow UI: http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning", flush=True)

    return run(start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="server", required=True)
    p = sub.add_parser("prefect", help="a Prefect server and the process serving the deployments")
    p.add_argument("--port", type=int, default=4200)
    m = sub.add_parser("mlflow", help="the MLflow UI")
    m.add_argument("--port", type=int, default=5000)
    m.add_argument("--store", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    m.add_argument("--artifacts", default=str(Path.cwd() / "mlruns"))
    args = parser.parse_args()
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    sys.exit(prefect(args.port) if args.server == "prefect" else mlflow(args.port, args.store, args.artifacts))


if __name__ == "__main__":
    main()
