"""The `kd-pipeline` flow: the whole DAG as cached Prefect tasks, students mapped over methods x seeds.

`kd_pipeline` validates the study first (an invalid one fails the flow run with the config
error as its message, before any task), then runs the `kd-study` subflow (`run_study`) on the task runner
the study asks for (`flows.runners`).
"""
from __future__ import annotations

import itertools
from typing import Any

from prefect import flow, unmapped
from prefect.states import Failed

from flows.runners import task_runner
from kdlib.config import MAIN_TEACHER, ConfigError, StudyConfig, load_config
from tasks import aggregate, cache_logits, evaluate, finetune_teacher, prepare_data, train_student, train_teacher
from tasks.common import result_storage, setup_torch


@flow(name="kd-pipeline", log_prints=True)
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
    try:
        cfg = load_config(params_path, merged)
    except ConfigError as err:
        print(err)
        return Failed(message=str(err))
    return run_study.with_options(task_runner=task_runner(cfg))(cfg)


@flow(name="kd-study", log_prints=True, validate_parameters=False)
def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """The DAG of one validated study (a subflow of `kd_pipeline`), on the task runner it was started with."""
    setup_torch(cfg)
    storage = result_storage(cfg)
    (
        prepare_data_task, train_teacher_task, finetune_teacher_task, cache_logits_task, train_student_task,
        evaluate_task, aggregate_task,
    ) = (
        step.prefect_task().with_options(result_storage=storage)
        for step in (prepare_data, train_teacher, finetune_teacher, cache_logits, train_student, evaluate, aggregate)
    )
    data = prepare_data_task(cfg)
    pairs = list(itertools.product(cfg.students.methods, cfg.students.seeds))
    # students that read no teacher cache (ce, zloss, ldr, uskd, bdkd's online teacher) need
    # only the data: submitted first, with logits=None, they wait for neither train_teacher
    # nor cache_logits, and their key holds no teacher (a new teacher re-runs only evaluate)
    cacheless = {
        pair: train_student_task.submit(cfg, *pair, data, None)
        for pair in pairs if not train_student.reads_cache(cfg, pair[0])
    }
    teacher = train_teacher_task.submit(cfg, data, MAIN_TEACHER)
    # every declared teacher is trained (or fine-tuned from `teacher`) and cached once;
    # a student waits only for the caches it reads
    models = {MAIN_TEACHER: teacher}
    models.update({name: train_teacher_task.submit(cfg, data, name) for name in cfg.teachers})
    models.update({name: finetune_teacher_task.submit(cfg, name, data, teacher) for name in cfg.finetuned_teachers})
    caches = {name: cache_logits_task.submit(cfg, data, model) for name, model in models.items()}

    def read_by(method: str) -> Any:
        names = train_student.student_teachers(cfg, method)
        return caches[names[0]] if len(names) == 1 else [caches[name] for name in names]

    students = [
        cacheless[pair] if pair in cacheless else train_student_task.submit(cfg, *pair, data, read_by(pair[0]))
        for pair in pairs
    ]
    fidelity = [caches[evaluate.fidelity_teacher(cfg, m)] for m, _ in pairs]
    evaluations = evaluate_task.map(cfg=unmapped(cfg), data=unmapped(data), logits=fidelity, student=students)
    # every teacher besides `teacher` gets its row in the report and its child run in MLflow
    extra = {name: model for name, model in models.items() if name != MAIN_TEACHER}
    summary = aggregate_task(cfg, teacher, evaluations.result(), extra)
    print(f"results table: {summary['dir']}/summary.md")
    return summary
