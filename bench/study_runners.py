"""Wall time of one small study: the sequential thread runner against a 2-worker Dask LocalCluster.

The study: digits data, a resnet8 teacher (2 epochs), 4 students (ce and kd, seeds 0 and 1;
`--student-arch`, `--student-epochs`), tracking on, torch threads 1 per task. It runs in a throw-away copy of
the project (tests/helpers/project.py), both runners in one process (one temporary Prefect server,
started before any timing), each time on a fresh store so nothing is cached; the runners
alternate `--repeats` times and medians are reported. Writes
bench/results/study_runners_<arch>_<epochs>ep_dask<workers>.json.

    .venv/bin/python bench/study_runners.py                                    # resnet8, 4 epochs
    .venv/bin/python bench/study_runners.py --student-arch resnet20 --student-epochs 10
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdlib import artifacts  # noqa: E402
from tests.helpers.project import BIN, make_project, project_env, run  # noqa: E402
from tests.helpers.study import TINY_STUDY  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SCRIPT = """
import json, sys, time
from prefect.client.orchestration import get_client
from flows.pipeline import kd_pipeline

repeats, workers = int(sys.argv[1]), int(sys.argv[2])
with get_client(sync_client=True) as client:  # start the temporary server before timing
    client.hello()
seconds = {"thread": [], "dask": []}
for repeat in range(repeats):
    for runner in ("thread", "dask"):
        runtime = {"task_runner": runner, "store": f"store_{runner}_{repeat}"}
        if runner == "dask":
            runtime["max_parallel_students"] = workers
        started = time.perf_counter()
        state = kd_pipeline(params_path="params.yaml", overrides={"runtime": runtime}, return_state=True)
        assert state.is_completed(), state
        seconds[runner].append(time.perf_counter() - started)
        print(f"repeat {repeat + 1}/{repeats} {runner}: {seconds[runner][-1]:.1f}s", flush=True)
print("RESULT" + json.dumps(seconds))
"""


def study(arch: str, epochs: int) -> dict:
    raw = json.loads(json.dumps(TINY_STUDY))
    raw["teacher"]["schedule"]["epochs"] = 2
    raw["students"].update(arch=arch, seeds=[0, 1])
    raw["students"]["schedule"]["epochs"] = epochs
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="runtime.max_parallel_students of the dask runs")
    parser.add_argument("--student-arch", default="resnet8")
    parser.add_argument("--student-epochs", type=int, default=4)
    args = parser.parse_args()
    raw = study(args.student_arch, args.student_epochs)
    with tempfile.TemporaryDirectory() as tmp:
        dest = make_project(Path(tmp), raw)
        result = run(
            [str(BIN / "python"), "-c", SCRIPT, str(args.repeats), str(args.workers)], dest, project_env(dest), timeout=3600
        )
    print(result.stdout[-2000:])
    seconds = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    median = {runner: statistics.median(s) for runner, s in seconds.items()}
    out = RESULTS / f"study_runners_{args.student_arch}_{args.student_epochs}ep_dask{args.workers}.json"
    artifacts.write_json(out, {
        "study": raw,
        "students": 4,
        "dask_workers": args.workers,
        "cpu_cores": os.cpu_count(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "repeats": args.repeats,
        "seconds": seconds,
        "median_seconds": median,
        "speedup_dask_over_thread": median["thread"] / median["dask"],
    })
    print(f"thread {median['thread']:.1f}s, dask x{args.workers} {median['dask']:.1f}s; wrote {out}")


if __name__ == "__main__":
    main()
