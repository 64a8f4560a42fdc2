"""Which `dvc repro` a stage's process runs under: the `dvc` process above it in the process tree.

DVC starts each stage as a child process (through a shell) and tells it nothing about the
repro it belongs to; the time ledger (`tasks.time_ledger`) and the fork server
(`tasks.forkserver`) need one name per repro, and take it from that process. Standard
library only: the fork server's client imports this before anything heavy.
"""
from __future__ import annotations

import os
from pathlib import Path

from kdlib.time_account import process_started


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start in clock ticks since boot) of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _is_dvc(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:2]) or argv[1:3] == [b"-m", b"dvc"]


SESSION_ENV = "KDFLOW_DVC_SESSION"
"""Set by `tasks.forkserver`'s client for the step it runs: a forked child's parent is the
server, not the stage's shell, so it cannot find its `dvc` above it."""


def dvc_session() -> tuple[str, float] | None:
    """(session id, start as Unix time) of the `dvc repro` this process runs under, or None
    (a stage started by hand, or no /proc)."""
    given = os.environ.get(SESSION_ENV)
    if given:
        session, _, started = given.partition("@")
        return session, float(started)
    pid = os.getppid()
    for _ in range(8):
        stat = _stat(pid)
        if stat is None or pid <= 1:
            return None
        if _is_dvc(pid):
            return f"dvc-{pid}-{stat[1]}", process_started(pid)
        pid = stat[0]
    return None


def is_running(session: str) -> bool:
    """Whether the `dvc` process of a `dvc_session` id still runs (the same process: pid and start)."""
    _, pid, ticks = session.split("-")
    stat = _stat(int(pid))
    return stat is not None and stat[1] == int(ticks)
