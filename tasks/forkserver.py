"""Run a DVC stage's step in a process forked from a warm one, instead of a cold interpreter.

Each DVC stage is a new process, and a cold one spends ~4 s importing torch, kdlib and
MLflow before its step starts: about the training time of a default-study student. Every
stage command is therefore

    .venv/bin/python -m tasks.forkserver <step> [arguments of python -m tasks.<step>]

This client imports only the standard library. Under a `dvc repro` (`tasks.dvc_session`) it
asks that repro's fork server, over a Unix socket in `.kdflow/forkserver/`, to fork a child
that runs `tasks.<step>.main()` with this process's arguments, working directory,
environment and standard streams (passed as file descriptors), and exits with the child's
status. The child is a fresh process for everything that matters: its own torch RNG, config,
MLflow connection, locks and time account; the parent only ever imported modules.

- The first stage of a repro finds no server: it starts one (detached, log in
  `.kdflow/forkserver/<session>.log`) and runs its own step cold meanwhile. A server that
  failed to start is not started again in the same repro: its stages run cold.
- The server preloads torch and the step modules (MLflow when the study tracks), never
  runs a torch op (a forked OpenMP pool would hang), and forks one child per request. It
  refuses a request once a module it imported changed on disk (the client then runs cold:
  an edit during a repro is never served stale code), and exits when its `dvc` process is
  gone, or after `IDLE_SECONDS` without a request.
- Signals: SIGINT, SIGTERM and SIGHUP sent to the client reach the child. A client killed
  outright (SIGKILL) closes its socket, and the child, watching it, kills itself: a stage
  never outlives its command.
- Without /proc, a `dvc` process above it or a reachable server, the step runs in this
  process as `python -m tasks.<step>` would (an `exec`, the same arguments).
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kdlib.time_account import process_started
from tasks.dvc_session import SESSION_ENV, dvc_session, is_running

STEPS = ("check_study", "prepare_data", "train_teacher", "finetune_teacher", "cache_logits", "train_student",
         "evaluate", "aggregate")
"""The steps a fork server runs (`tasks.<step>.main`); anything else is refused."""
PRELOAD = ("tasks.train_student", "tasks.evaluate", "tasks.train_teacher", "tasks.finetune_teacher",
           "tasks.cache_logits", "tasks.prepare_data")
"""What the server imports before it serves: the steps that train and evaluate. Not aggregate
(nor check_study, which imports every step): their plotting and statistics libraries are no
training process's business, and they import them themselves, once per repro."""
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals the client passes on to its child (those it does not ignore; the child ignores the same)."""
HOME = Path(".kdflow/forkserver")
IDLE_SECONDS = 600.0
STARTED_ENV = "KDFLOW_STARTED"
"""The client's start (Unix time), for the child's time account (`tasks.time_ledger`)."""


# --------------------------------------------------------------------------- #
# the client: a DVC stage's command
# --------------------------------------------------------------------------- #
def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] = ()) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def _lines(sock: socket.socket) -> Any:
    """The JSON messages on `sock`, one per line, until it closes."""
    buffer = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


def run_cold(step: str, args: list[str]) -> None:
    """Become `python -m tasks.<step> args` (never returns)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", f"tasks.{step}", *args])


def _start_server(session: str) -> None:
    HOME.mkdir(parents=True, exist_ok=True)
    with open(HOME / f"{session}.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "tasks.forkserver", "--serve", session], stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True, close_fds=True,
        )


def client(step: str, args: list[str]) -> int:
    """Run `step` in a child of this repro's fork server; returns its exit status (a shell's
    128 + N for a child killed by signal N, which this process then dies of too)."""
    if step not in STEPS:
        print(f"forkserver: unknown step {step!r}; one of {', '.join(STEPS)}", file=sys.stderr)
        return 2
    os.environ[STARTED_ENV] = repr(process_started())
    found = dvc_session()
    if found is None:
        run_cold(step, args)
    session = found[0]
    os.environ[SESSION_ENV] = f"{session}@{found[1]!r}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(HOME / f"{session}.sock"))
    except OSError:
        sock.close()
        if not (HOME / f"{session}.log").exists():  # one start per repro: a server that failed is not retried
            _start_server(session)
        run_cold(step, args)
    ignored = [int(sig) for sig in FORWARDED if signal.getsignal(sig) == signal.SIG_IGN]  # as a cold step would inherit
    request = {"step": step, "args": args, "cwd": os.getcwd(), "env": dict(os.environ), "ignored": ignored}
    messages = None
    try:
        _send(sock, request, [0, 1, 2])
        messages = _lines(sock)
        reply = next(messages, None)
    except OSError:
        reply = None
    if reply is None or "pid" not in reply:
        print(f"forkserver: {(reply or {}).get('refused', 'no answer')}; running {step} in a new interpreter",
              file=sys.stderr)
        sock.close()
        run_cold(step, args)
    child = reply["pid"]

    def forward(signum: int, frame: Any) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        if sig not in ignored:
            signal.signal(sig, forward)
    done = next(messages, None) if messages is not None else None
    if done is None:
        print(f"forkserver: the server went away while {step} ran (pid {child})", file=sys.stderr)
        return 1
    status = done["status"]
    if status < 0:  # killed by a signal: so is this process, as the shell and DVC would see it
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


# --------------------------------------------------------------------------- #
# the server: one per `dvc repro`
# --------------------------------------------------------------------------- #
def _module_files() -> dict[str, int]:
    """mtime (ns) of every imported module file of this project: what a child would run."""
    root = Path.cwd().resolve()
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not os.path.isabs(path) or not os.path.isfile(path):
            continue
        if Path(path).resolve().is_relative_to(root) and ".venv" not in Path(path).parts:
            files[path] = os.stat(path).st_mtime_ns
    return files


def _changed(files: dict[str, int]) -> str | None:
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return path
        except OSError:
            return path
    return None


def preload() -> None:
    """Import `PRELOAD`, and MLflow's SQL store when params.yaml's study tracks: what every child inherits."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    try:
        from kdlib.config import load_config

        if load_config("params.yaml").tracking.enabled:
            from tasks.tracking import PRELOAD as TRACKING

            for name in TRACKING:
                importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - an invalid study is check_study's to report
        print(f"forkserver: not preloading MLflow ({type(err).__name__}: {err})", flush=True)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[2]


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 20)
        if not more:
            raise ConnectionError("request cut short")
        data += more
    return json.loads(data), fds


def _fresh_stdio() -> None:
    """sys.stdout and sys.stderr over the stage's descriptors, buffered as a fresh interpreter's
    would be (line-buffered on a terminal, `PYTHONUNBUFFERED` honoured): the server's were
    set up for its log file."""
    import io

    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for fd, name in ((1, "stdout"), (2, "stderr")):
        raw = io.FileIO(fd, "w", closefd=False)
        stream = io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw), encoding=getattr(sys, name).encoding,
            errors="backslashreplace" if name == "stderr" else "strict",
            line_buffering=name == "stderr" or os.isatty(fd), write_through=unbuffered,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int], listener: socket.socket) -> None:
    """In the forked child: become the step's process and run it (never returns)."""
    status = 1
    try:
        listener.close()
        for sig in FORWARDED:  # Python's start-up dispositions, or SIG_IGN where the client had that
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, signal.SIG_IGN if int(sig) in request.get("ignored", ()) else default)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _fresh_stdio()

        def watch() -> None:  # the client's end closed: it was killed, and so is its step
            try:
                while conn.recv(1):
                    pass
            except OSError:
                pass
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
        import importlib

        module = importlib.import_module(f"tasks.{request['step']}")
        sys.argv = [module.__file__, *request["args"]]
        try:
            module.main()
            status = 0
        except SystemExit as exit_:
            code = exit_.code
            status = code if isinstance(code, int) else (0 if code is None else 1)
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - as `python -m` ends on any uncaught exception, KeyboardInterrupt too
            import traceback

            traceback.print_exc()
            status = 1
        import atexit

        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def serve(session: str) -> None:
    """Serve `session`'s stages until its `dvc` process is gone or `IDLE_SECONDS` pass idle."""
    HOME.mkdir(parents=True, exist_ok=True)
    lock = open(HOME / f"{session}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server of this session is starting or running
    for old in HOME.glob("dvc-*.*"):  # what the servers of finished repros left
        if old.stem != session and not is_running(old.stem):
            old.unlink(missing_ok=True)
    path = HOME / f"{session}.sock"
    path.unlink(missing_ok=True)
    started = time.monotonic()
    preload()
    files = _module_files()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(8)
    print(f"forkserver {session}: ready after {time.monotonic() - started:.1f} s, {len(files)} module files watched",
          flush=True)
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    stale: str | None = None
    try:
        while True:
            ready, _, _ = select.select([listener], [], [], 0.5)
            if ready:
                conn, _ = listener.accept()
                last = time.monotonic()
                try:
                    if _peer_uid(conn) != os.getuid():
                        raise PermissionError("another user's request")
                    request, fds = _receive(conn)
                except (OSError, ValueError, ConnectionError) as err:
                    print(f"forkserver: bad request ({err})", flush=True)
                    conn.close()
                    continue
                stale = stale or _changed(files)
                refusal = (f"{stale} changed since the server started" if stale else
                           None if request.get("step") in STEPS else f"unknown step {request.get('step')!r}")
                if refusal is None and Path(request.get("cwd", "")).resolve() != Path.cwd().resolve():
                    refusal = "another project directory"
                if refusal is not None or len(fds) != 3:
                    print(f"refused {request.get('step')!r}: {refusal or 'no standard streams'}", flush=True)
                    _send(conn, {"refused": refusal or "no standard streams"})
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(conn, request, fds, listener)
                for fd in fds:
                    os.close(fd)
                _send(conn, {"pid": pid})
                children[pid] = conn
                print(f"forked {request['step']} {' '.join(request['args'])} as pid {pid}", flush=True)
            while children:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is not None:
                    code = os.waitstatus_to_exitcode(wait_status)
                    try:
                        _send(conn, {"status": code})
                    except OSError:
                        pass
                    conn.close()
            if not children and (stale or not is_running(session) or time.monotonic() - last > IDLE_SECONDS):
                return
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return
    if len(sys.argv) < 2:
        print("usage: python -m tasks.forkserver <step> [arguments of python -m tasks.<step>]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(client(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
