"""The `kd-pipeline` flow: the whole DAG as cached Prefect tasks, students mapped over methods x seeds."""
from __future__ import annotations

import itertools
from typing import Any

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from kdlib.config import load_config
from tasks import aggregate, cache_logits, evaluate, prepare_data, train_student, train_teacher
from tasks.common import result_storage, setup_torch


@flow(name="kd-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def kd_pipeline(
    params_path: str = "params.yaml",
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a study; `methods`, `seeds` and `overrides` (a nested mapping merged into the study file) change it."""
    merged = dict(overrides or {})
    students = dict(merged.get("students", {}))
    if methods is not None:
        students["methods"] = methods
    if seeds is not None:
        students["seeds"] = seeds
    if students:
        merged["students"] = students
    cfg = load_config(params_path, merged)
    setup_torch(cfg)

    storage = result_storage(cfg)
    prepare_data_task, train_teacher_task, cache_logits_task, train_student_task, evaluate_task, aggregate_task = (
        step.prefect_task().with_options(result_storage=storage)
        for step in (prepare_data, train_teacher, cache_logits, train_student, evaluate, aggregate)
    )
    data = prepare_data_task(cfg)
    teacher = train_teacher_task(cfg, data)
    logits = cache_logits_task(cfg, data, teacher)
    pairs = list(itertools.product(cfg.students.methods, cfg.students.seeds))
    students = train_student_task.map(
        cfg=unmapped(cfg), method=[m for m, _ in pairs], seed=[s for _, s in pairs],
        data=unmapped(data), logits=unmapped(logits),
    )
    evaluations = evaluate_task.map(cfg=unmapped(cfg), data=unmapped(data), logits=unmapped(logits), student=students)
    summary = aggregate_task(cfg, teacher, evaluations.result())
    print(f"results table: {summary['dir']}/summary.md")
    return summary
