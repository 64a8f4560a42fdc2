"""`runtime.task_runner`: the Prefect task runner a study asks for.

The study's tasks run in the `kd-study` subflow, started with
`run_study.with_options(task_runner=task_runner(cfg))` once the `kd-pipeline` flow has read the
study file (which runner a study wants is in that file).

- `thread` (default): Prefect's ThreadPoolTaskRunner with one worker: one task at a time,
  in the flow's process.
- `dask`: prefect-dask's DaskTaskRunner. Without `runtime.dask_address`, a LocalCluster
  of `runtime.max_parallel_students` worker processes with one thread each (one task per
  process: torch's RNG and thread count are process-global); with it, the running
  cluster at that address, whose workers bound the parallelism. Every step runs there;
  each waits on its inputs, so what overlaps is the independent students (and their
  evaluations).
"""
from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from kdlib.config import StudyConfig


def task_runner(cfg: StudyConfig) -> TaskRunner:
    """The (not yet started) task runner `cfg.runtime` asks for."""
    if cfg.runtime.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if cfg.runtime.dask_address is not None:
        return DaskTaskRunner(address=cfg.runtime.dask_address)
    # the dashboard (when bokeh is installed) listens on loopback only, on a free port
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": cfg.runtime.max_parallel_students, "threads_per_worker": 1, "processes": True,
            "dashboard_address": "127.0.0.1:0",
        },
    )
