"""The `kd-pipeline` flow: the whole DAG as cached Prefect tasks, students mapped over methods x seeds.

`kd_pipeline` validates the study first (an invalid one fails the flow run with the config
error as its message, before any task), opens the MLflow parent run of this flow run, then
runs the `kd-study` subflow (`run_study`) on the task runner the study asks for
(`flows.runners`): each task that computes a teacher or a student logs to its own live
child run. At the end it publishes: the self-contained report of this flow run
(`.kdflow/reports/<flow run id>/report.html`), the parent run's results and links to the runs
that computed what was reused, and two Prefect artifacts on the flow run: the results table
(Markdown) and a link to the MLflow parent run.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from prefect import flow, unmapped
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import deployment, flow_run
from prefect.states import Failed

from flows.runners import task_runner
from kdlib.config import MAIN_TEACHER, ConfigError, StudyConfig, load_config
from tasks import (
    aggregate, cache_logits, evaluate, finetune_teacher, prepare_data, time_ledger, tracking, train_student, train_teacher,
)
from tasks.common import result_storage, setup_torch

REPORTS = Path(".kdflow/reports")
"""Each flow run's self-contained report.html, under its flow run id."""


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
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
            "prefect.deployment": str(deployment.name or "none (called directly)")}
    started = time.time()
    parent = tracking.start_parent(cfg, "prefect", tags, source="flows/pipeline.py")
    try:
        outcome = run_study.with_options(task_runner=task_runner(cfg))(cfg, parent)
        publish(cfg, outcome, parent, tags, started)
    except BaseException as err:  # failed, cancelled or stopped: so are this run's live MLflow runs
        tracking.end_open_runs(tracking.status_of(err))
        tracking.finish_parent(cfg, parent, tracking.status_of(err))
        raise
    tracking.finish_parent(cfg, parent, "FINISHED")
    return outcome["summary"]


def publish(cfg: StudyConfig, outcome: dict[str, Any], parent: str | None, tags: dict[str, str], started: float) -> None:
    """This flow run's report, MLflow parent and Prefect artifacts (see the module docstring);
    the report's time account runs from `started` (this flow run's start) to now."""
    summary = outcome["summary"]
    spent = ("the Prefect flow", time_ledger.summary(time_ledger.read(outcome["session"]), started, time.time()))
    report = aggregate.publish(cfg, summary, REPORTS / str(flow_run.id) / "report.html", parent, "prefect",
                               outcome["teachers"], outcome["evaluations"], tags, time_spent=spent)
    report = report.resolve()
    table = (Path(summary["dir"]) / "summary.md").read_text()
    mlflow_line = "MLflow: tracking off" if parent is None else f"MLflow parent run: `{parent}`"
    create_markdown_artifact(
        key="kd-results", markdown=f"{table}\n{mlflow_line}\n\nReport: `{report}`\n\nResults: `{summary['dir']}`\n",
        description=f"{cfg.study}: results table (mean ± std over seeds)",
    )
    if parent is not None:
        experiment = tracking.experiment_of(cfg, parent)
        create_link_artifact(
            key="mlflow-parent-run", link=tracking.ui_url(cfg, experiment, parent), link_text=f"MLflow run of {cfg.study}",
            description=f"The MLflow parent run of this flow run (`make ui` serves a local store). Report: `{report}`",
        )


@flow(name="kd-study", log_prints=True, validate_parameters=False)
def run_study(cfg: StudyConfig, parent_run_id: str | None = None) -> dict[str, Any]:
    """The DAG of one validated study (a subflow of `kd_pipeline`), on the task runner it was
    started with; tasks that compute log to live MLflow runs nested under `parent_run_id`.
    Returns the aggregate's manifest (`summary`) and the manifests `publish` links.

    A SIGTERM to the flow run (a cancellation, `make serve` stopping) ends the training tasks
    at their next epoch, their MLflow runs KILLED (`tracking.stop_on_signals`; Ctrl-C too)."""
    with tracking.stop_on_signals():
        return _run_study(cfg, parent_run_id)


def _run_study(cfg: StudyConfig, parent_run_id: str | None) -> dict[str, Any]:
    setup_torch(cfg)
    storage = result_storage(cfg)
    (
        prepare_data_task, train_teacher_task, finetune_teacher_task, cache_logits_task, train_student_task,
        evaluate_task, aggregate_task,
    ) = (
        step.prefect_task().with_options(result_storage=storage)
        for step in (prepare_data, train_teacher, finetune_teacher, cache_logits, train_student, evaluate, aggregate)
    )
    parent = parent_run_id  # every task that computes logs to a live run under it
    # every task is submitted, none called in this thread: with the thread runner all torch work
    # then runs on its one worker thread. On CPU, a second thread running torch ops (its own
    # OpenMP team) made every student 2.5x slower (docs/scaling.md, "Where the time goes").
    data = prepare_data_task.submit(cfg)
    pairs = list(itertools.product(cfg.students.methods, cfg.students.seeds))
    # students that read no teacher cache (ce, zloss, ldr, uskd, bdkd's online teacher) need
    # only the data: submitted first, with logits=None, they wait for neither train_teacher
    # nor cache_logits, and their key holds no teacher (a new teacher re-runs only evaluate)
    cacheless = {
        pair: train_student_task.submit(cfg, *pair, data, None, parent_run_id=parent)
        for pair in pairs if not train_student.reads_cache(cfg, pair[0])
    }
    teacher = train_teacher_task.submit(cfg, data, MAIN_TEACHER, parent_run_id=parent)
    # every declared teacher is trained (or fine-tuned from `teacher`) and cached once;
    # a student waits only for the caches it reads
    models = {MAIN_TEACHER: teacher}
    models.update({name: train_teacher_task.submit(cfg, data, name, parent_run_id=parent) for name in cfg.teachers})
    models.update({name: finetune_teacher_task.submit(cfg, name, data, teacher, parent_run_id=parent)
                   for name in cfg.finetuned_teachers})
    caches = {name: cache_logits_task.submit(cfg, data, model) for name, model in models.items()}

    def read_by(method: str) -> Any:
        names = train_student.student_teachers(cfg, method)
        return caches[names[0]] if len(names) == 1 else [caches[name] for name in names]

    students = [
        cacheless[pair] if pair in cacheless
        else train_student_task.submit(cfg, *pair, data, read_by(pair[0]), parent_run_id=parent)
        for pair in pairs
    ]
    fidelity = [caches[evaluate.fidelity_teacher(cfg, m)] for m, _ in pairs]
    evaluations = evaluate_task.map(cfg=unmapped(cfg), data=unmapped(data), logits=fidelity, student=students,
                                    parent_run_id=unmapped(parent))
    # every teacher besides `teacher` gets its row in the report (and is linked from the MLflow parent)
    extra = {name: model for name, model in models.items() if name != MAIN_TEACHER}
    done = evaluations.result()
    summary = aggregate_task.submit(cfg, teacher, done, extra, data, caches[MAIN_TEACHER]).result()
    print(f"results table: {summary['dir']}/summary.md")
    return {"summary": summary, "evaluations": done, "session": f"prefect-{flow_run.id}",
            "teachers": {name: model.result() for name, model in models.items()}}
