"""Where a study's wall time goes, through both front doors, side by side in one run.

In a throw-away copy of the project (tests/helpers/project.py) holding the study (default:
the project's params.yaml), each repeat runs both front doors from scratch, alternating:

- `dvc`: `dvc repro -f` (every stage runs), timed from outside;
- `prefect`: the `kd-pipeline` flow on a fresh store (nothing cached), in a process with a
  temporary Prefect server started before the timing; the flow call is timed inside it.

Each run's time ledger (`tasks.time_ledger`) gives its steps' wall time, their work (data,
compute, diagnostics, evaluation, writing) and their training compute. The JSON has, per
front door and repeat, the wall time, those sums, the ratios wall / work and wall / compute
(the targets: <= 1.2x for the flow, <= 1.5x for `dvc repro`, of the steps' work), the
per-step table, and medians over repeats. Writes bench/results/front_doors.json.

    .venv/bin/python bench/front_doors.py                  # the default study, 1 repeat (~6 min)
    .venv/bin/python bench/front_doors.py --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdlib import artifacts  # noqa: E402
from tasks import time_ledger  # noqa: E402
from tests.helpers.project import BIN, make_project, project_env, run  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGETS = {"prefect": 1.2, "dvc": 1.5}
FLOW = """
import json, sys, time
from prefect.client.orchestration import get_client
from flows.pipeline import kd_pipeline

with get_client(sync_client=True) as client:  # the temporary server starts before the timing
    client.hello()
started = time.time()
state = kd_pipeline(params_path="params.yaml", overrides={"runtime": {"store": sys.argv[1]}}, return_state=True)
ended = time.time()
assert state.is_completed(), state
print("RESULT" + json.dumps({"started": started, "ended": ended}))
"""


def new_session(dest: Path, before: set[str], prefix: str) -> str:
    found = sorted(p.name for p in (dest / time_ledger.LEDGER).glob(f"{prefix}-*") if p.name not in before)
    if len(found) != 1:
        raise RuntimeError(f"expected one new {prefix} time ledger session, found {found}")
    return found[0]


def account(dest: Path, session: str, started: float, ended: float) -> dict:
    cwd = os.getcwd()
    os.chdir(dest)
    try:
        records = time_ledger.read(session)
    finally:
        os.chdir(cwd)
    out = time_ledger.summary(records, started, ended)
    out["step_runs"] = len(records)
    return out


def run_dvc(dest: Path, env: dict) -> dict:
    before = {p.name for p in (dest / time_ledger.LEDGER).glob("*")} if (dest / time_ledger.LEDGER).is_dir() else set()
    started = time.time()
    run([str(BIN / "dvc"), "repro", "-f"], dest, env, timeout=3600)
    ended = time.time()
    return account(dest, new_session(dest, before, "dvc"), started, ended)


def run_prefect(dest: Path, env: dict, store: str) -> dict:
    before = {p.name for p in (dest / time_ledger.LEDGER).glob("*")} if (dest / time_ledger.LEDGER).is_dir() else set()
    process_started = time.time()
    result = run([str(BIN / "python"), "-c", FLOW, store], dest, env, timeout=3600)
    process_wall = time.time() - process_started
    times = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    out = account(dest, new_session(dest, before, "prefect"), times["started"], times["ended"])
    out["process_wall"] = process_wall  # + interpreter, imports and the temporary Prefect server
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="the study (default: params.yaml)")
    args = parser.parse_args()
    study = yaml.safe_load(Path(args.params).read_text())
    runs: dict[str, list[dict]] = {"dvc": [], "prefect": []}
    with tempfile.TemporaryDirectory() as tmp:
        dest = make_project(Path(tmp), study)
        env = project_env(dest)
        for repeat in range(args.repeats):
            for door in ("dvc", "prefect") if repeat % 2 == 0 else ("prefect", "dvc"):
                out = run_dvc(dest, env) if door == "dvc" else run_prefect(dest, env, f"store_{repeat}")
                runs[door].append(out)
                print(f"repeat {repeat + 1}/{args.repeats} {door}: {out['total_wall']:.1f} s wall, work {out['work']:.1f} s, "
                      f"compute {out['compute']:.1f} s: {out['total_over_work']:.2f}x the work", flush=True)
    medians = {
        door: {k: statistics.median(r[k] for r in rs) for k in ("total_wall", "steps_wall", "work", "compute",
                                                                 "total_over_work", "total_over_compute")}
        for door, rs in runs.items()
    }
    for door, m in medians.items():
        m["target_total_over_work"] = TARGETS[door]
        m["meets_target"] = m["total_over_work"] <= TARGETS[door]
    out = RESULTS / "front_doors.json"
    artifacts.write_json(out, {
        "study": Path(args.params).name, "repeats": args.repeats, "cpu_cores": os.cpu_count(),
        "machine": platform.platform(), "load_average_1min_at_end": os.getloadavg()[0],
        "definitions": {
            "total_wall": "dvc: `dvc repro -f` from start to exit; prefect: the kd_pipeline call (process_wall adds "
                          "the interpreter, imports and the temporary server)",
            "work": "the steps' data + compute + diagnostics + evaluation + writing (kdlib.time_account.WORK)",
            "compute": "the steps' training compute (and a logit cache's teacher passes)",
        },
        "median": medians, "runs": runs,
    })
    for door, m in medians.items():
        print(f"{door}: {m['total_wall']:.1f} s, {m['total_over_work']:.2f}x the work (target {TARGETS[door]}x), "
              f"{m['total_over_compute']:.2f}x the training compute")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
