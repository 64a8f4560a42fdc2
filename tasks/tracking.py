"""MLflow side channel: one parent run per pipeline run, a child run per teacher and student.

Logged from the finished artifacts (manifests, per-epoch histories, metrics), so the
tree is the same whichever front door ran the study and a cached step costs nothing.
MLflow is imported here only, lazily: it is slow to import and kdlib never needs it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdlib.config import MAIN_TEACHER, StudyConfig
from kdlib.methods.base import build_method
from tasks import train_teacher
from tasks.common import Manifest


def tracking_uri(cfg: StudyConfig) -> str:
    """`sqlite:///relative.db` is resolved against the project (cwd), so every process agrees."""
    uri = cfg.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str((Path.cwd() / uri[len(prefix):]).resolve())
    return uri


def metric_safe(name: str) -> str:
    """MLflow metric keys cannot hold '+': `ce+binarykl_norm` is logged as `ce_plus_binarykl_norm`."""
    return name.replace("+", "_plus_")


def _experiment_id(mlflow: Any, cfg: StudyConfig) -> str:
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    if tracking_uri(cfg).startswith(("http://", "https://")):
        # a tracking server keeps artifacts where it was started to (--artifacts-destination)
        return mlflow.create_experiment(cfg.tracking.experiment)
    artifact_root = (Path.cwd() / "mlruns").resolve().as_uri()
    return mlflow.create_experiment(cfg.tracking.experiment, artifact_location=artifact_root)


def _flatten(prefix: str, obj: Any) -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(obj) if isinstance(obj, list) else str(obj)}


def _log_history(client: Any, run_id: str, history: list[dict[str, float]]) -> None:
    from mlflow.entities import Metric

    metrics = [
        Metric(name, float(value), 0, int(record["epoch"]))
        for record in history
        for name, value in record.items()
        if name != "epoch"
    ]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def _teacher_param(cfg: StudyConfig, method: str) -> dict[str, str]:
    """`settings.teacher` of a one-teacher method entry: the setting is left out of settings
    dumps (the student's key holds the chosen cache instead), so it is logged here."""
    names = build_method(method, cfg.method_settings(method)).teacher_names()
    return {"settings.teacher": names[0]} if len(names) == 1 else {}


def _log_teacher(
    mlflow: Any, client: Any, experiment_id: str, run_name: str, name: str, manifest: Manifest, params: dict[str, str]
) -> None:
    """A teacher's child run: its params, per-epoch history and final test metrics; tagged
    with its name and how it was made (`tasks.train_teacher.made`)."""
    made = train_teacher.made(manifest)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=True) as run:
        mlflow.set_tags({"role": "teacher", "teacher": name, "made": made,
                         "artifact_key": manifest["key"], "artifact_dir": manifest["dir"]})
        mlflow.log_params(params)
        _log_history(client, run.info.run_id, json.loads((Path(manifest["dir"]) / "history.json").read_text()))
        mlflow.log_metrics({f"final/{k}": v for k, v in manifest["meta"]["test"].items()}
                           | {"final/best_top1": manifest["meta"]["best_top1"]})


def log_study(
    cfg: StudyConfig, teacher: Manifest, evaluations: list[Manifest], results_dir: Path,
    teachers: dict[str, Manifest] | None = None,
) -> str:
    """Log the run tree; returns the parent run's id. `teachers`: the extra and fine-tuned
    teachers by name, each its own child run like `teacher`'s."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(cfg))
    client = MlflowClient()
    experiment_id = _experiment_id(mlflow, cfg)
    with mlflow.start_run(experiment_id=experiment_id, run_name=cfg.study) as parent:
        mlflow.log_params(_flatten("", cfg.model_dump(exclude={"methods"})) | {"methods": json.dumps(cfg.students.methods)})
        summary = json.loads((Path(results_dir) / "summary.json").read_text())
        for row in summary["methods"]:
            mlflow.log_metrics({
                f"{k}/{metric_safe(row['method'])}": v for k, v in row.items()
                if k.endswith(("_mean", "_std")) and v is not None  # None: a metric this method has not (aux-head NC)
            })
        for name in ("summary.csv", "summary.md", "summary.json", "report.md", "report.html"):
            mlflow.log_artifact(str(Path(results_dir) / name))
        mlflow.log_artifacts(str(Path(results_dir) / "figures"), "figures")  # beside report.html, which links them

        _log_teacher(mlflow, client, experiment_id, f"teacher {teacher['meta']['arch']}", MAIN_TEACHER, teacher,
                     _flatten("teacher", cfg.teacher.model_dump()))
        for name, manifest in (teachers or {}).items():
            if name in cfg.teachers:
                params = _flatten("teacher", cfg.teachers[name].model_dump())
            else:  # fine-tuned from `teacher`: its settings, and the teacher it started from
                params = _flatten("finetune", cfg.finetuned_teachers[name].model_dump()) | {"from": MAIN_TEACHER}
            _log_teacher(mlflow, client, experiment_id, f"teacher {name} ({manifest['meta']['arch']})", name, manifest,
                         params | {"arch": manifest["meta"]["arch"]})

        for evaluation in evaluations:
            metrics = evaluation["meta"]["metrics"]
            student_dir = Path(evaluation["meta"]["student_dir"])
            method, seed = metrics["method"], metrics["seed"]
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{method} seed {seed}", nested=True) as run:
                mlflow.set_tags({"role": "student", "method": method, "artifact_key": evaluation["meta"]["student_key"], "artifact_dir": str(student_dir)})
                mlflow.log_params(
                    {"method": method, "seed": seed, "arch": cfg.students.arch}
                    | _flatten("settings", cfg.method_settings(method).model_dump()) | _teacher_param(cfg, method)
                    | _flatten("schedule", cfg.students.schedule.model_dump())
                )
                if "failed" in metrics:
                    mlflow.set_tags({"status": "failed", "error": metrics["failed"][:5000]})
                    continue
                _log_history(client, run.info.run_id, json.loads((student_dir / "history.json").read_text()))
                mlflow.log_metrics({f"final/{k}": float(v) for k, v in metrics.items() if k not in ("method", "seed")})
        return parent.info.run_id
