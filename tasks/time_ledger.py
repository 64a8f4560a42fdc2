"""The time account of one pipeline run: each step's `kdlib.time_account` record, per front door.

Records live in `.kdflow/time/<session>/`, one JSON file per step run, outside every hashed
output. A session is one pipeline run of one front door:

- `dvc-<pid>-<start>`: one `dvc repro` process. DVC starts each stage as a child process
  and has no notion of "this repro", so a stage finds the `dvc` process above it in the
  process tree (`tasks.dvc_session`); the session's total wall time runs from that process's start.
- `prefect-<flow run id>`: one run of the `kd-study` subflow; its tasks find it in their
  Prefect task run context (`prefect_session`), and `kd-pipeline` times the whole.

The aggregate step reads its session's records and writes the "where the time went" table
into the run's own report (`table`), never into the results' manifest.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from kdlib import artifacts
from kdlib.time_account import PHASES, WORK, TimeAccount, process_started
from tasks.dvc_session import dvc_session
from tasks.forkserver import STARTED_ENV

LEDGER = Path(".kdflow/time")


def prefect_session() -> str | None:
    """The session of the Prefect flow run this code runs a task of, or None (no Prefect
    task context: a DVC stage or a direct call). Prefect is only looked at if already imported."""
    if "prefect" not in sys.modules:
        return None
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    return f"prefect-{context.task_run.flow_run_id}" if context is not None else None


def session_dir(session: str) -> Path:
    return LEDGER / session


def write(session: str | None, account: TimeAccount, **extra: Any) -> dict[str, Any]:
    """Close `account` into its session's folder (nothing when `session` is None); returns the record."""
    record = account.record(**extra)
    phases = ", ".join(f"{k} {v:.1f}" for k, v in record["seconds"].items() if v >= 0.05)
    label = " ".join(filter(None, (account.step, account.entry)))
    print(f"time account {label}: {record['wall']:.1f} s ({phases}, other {record['other']:.1f})", flush=True)
    if session is not None:
        name = account.step + (f"@{account.entry}" if account.entry else "")
        try:
            artifacts.write_json(session_dir(session) / f"{name}.json", record)
        except OSError as err:  # the account is a side channel: it never stops a step
            print(f"time account: cannot write {name} ({err})", file=sys.stderr)
    return record


def read(session: str) -> list[dict[str, Any]]:
    """The records of a session, in the order the steps started."""
    records = []
    for path in sorted(session_dir(session).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r["started"])


def so_far(session: str, started: float, account: TimeAccount) -> dict[str, Any]:
    """`summary` of a session until now, with the still open `account` (the step writing the report)."""
    records = [r for r in read(session) if (r["step"], r["entry"]) != (account.step, account.entry)]
    return summary([*records, account.record()], started, time.time())


def summary(records: Iterable[dict[str, Any]], started: float, ended: float) -> dict[str, Any]:
    """Per step name: runs, wall and seconds per phase summed; the front door's total wall
    (`started` to `ended`), the summed steps, what lies between them, and the ratios of the
    total to the steps' work (`kdlib.time_account.WORK`) and to their training compute."""
    steps: dict[str, dict[str, Any]] = {}
    for r in records:
        row = steps.setdefault(r["step"], {"runs": 0, "cached": 0, "wall": 0.0, "other": 0.0, **dict.fromkeys(PHASES, 0.0)})
        row["runs"] += 1
        row["cached"] += int(bool(r.get("cached")))
        row["wall"] += r["wall"]
        row["other"] += r["other"]
        for phase in PHASES:
            row[phase] += r["seconds"].get(phase, 0.0)
    total = max(ended - started, 0.0)
    summed = sum(row["wall"] for row in steps.values())
    work = sum(row[p] for row in steps.values() for p in WORK)
    compute = sum(row["compute"] for row in steps.values())
    return {
        "steps": steps, "total_wall": total, "steps_wall": summed, "between_steps": max(total - summed, 0.0),
        "work": work, "compute": compute,
        "total_over_work": total / work if work else None, "total_over_compute": total / compute if compute else None,
    }


def table(account: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """`summary`'s per-step rows, seconds summed over each step's runs: (header, rows)."""
    columns = ["startup", *WORK, "tracking", "other"]
    rows = [
        [step, f"{row['runs']}" + (f" ({row['cached']} reused)" if row["cached"] else ""), f"{row['wall']:.1f}",
         *(f"{row[c]:.1f}" for c in columns)]
        for step, row in account["steps"].items()
    ]
    return ["step", "runs", "wall s", *columns], rows


def totals(front_door: str, account: dict[str, Any]) -> str:
    """`summary`'s front-door totals in one sentence."""
    ratio = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
    return (
        f"{front_door}: {account['total_wall']:.1f} s of wall time from its start to this report. The steps' own "
        f"processes or tasks account for {account['steps_wall']:.1f} s; {account['between_steps']:.1f} s lie between "
        f"them (the front door's own work: starting processes, hashing outputs, scheduling tasks). The steps' work "
        f"({', '.join(WORK)}) is {account['work']:.1f} s, of which training compute {account['compute']:.1f} s: the "
        f"total is {ratio(account['total_over_work'])} the work and {ratio(account['total_over_compute'])} the "
        "training compute."
    )


def dvc_stage_account(step: str, entry: str = "") -> tuple[str | None, TimeAccount]:
    """The account of a DVC stage's process, from the start of its command (`tasks.forkserver`'s
    client, or this process), and the session it belongs to."""
    started = float(os.environ.get(STARTED_ENV, "0")) or process_started()
    found = dvc_session()
    return (found[0] if found else None), TimeAccount(step, entry, started=started)
