"""evaluate: test metrics of one trained student, against the labels and the teacher.

Writes `metrics.json` (accuracy, calibration, teacher fidelity, and the neural-collapse
metrics the student's last epoch recorded) and `reliability.json` (the reliability
diagram's per-bin sums, poolable over seeds). A failed student (its manifest's meta has
`failed`) gets both too: `metrics.json` with its error, `reliability.json` with empty bins
and the error, so both front doors carry the failure on to the table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kdlib import artifacts, time_account
from kdlib.config import MAIN_TEACHER, StudyConfig
from kdlib.data.dataset import load_dataset
from kdlib.logit_cache import LogitCache
from kdlib.diagnostics import teacher_fidelity
from kdlib.evaluation import evaluate_model
from kdlib.metrics import agreement, kl_to_teacher, reliability_diagram
from kdlib.token_cache import TEST_TOKENS, TokenCache
from tasks import common, tracking
from tasks.train_student import HISTORY, load_student, student_teachers

STEP = "evaluate"
CODE_ROOTS = ("tasks.evaluate",)
METRICS, RELIABILITY = "metrics.json", "reliability.json"


def fidelity_teacher(cfg: StudyConfig, method: str) -> str:
    """The teacher whose cache a method entry's students are measured against: the (first)
    one they were distilled from, `teacher` for a method that reads no cache."""
    return (student_teachers(cfg, method) or [MAIN_TEACHER])[0]


def failed_diagram(bins: int, error: str) -> dict[str, Any]:
    """The reliability diagram of a failed student: every bin empty, and the error."""
    return {"count": [0.0] * bins, "confidence_sum": [0.0] * bins, "correct": [0.0] * bins, "failed": error}


def key(cfg: StudyConfig, data: common.Manifest, logits: common.Manifest, student: common.Manifest) -> str:
    return common.cache_key(STEP, cfg.evaluation.model_dump(), [data, logits, student], CODE_ROOTS)


def run(
    cfg: StudyConfig, data: common.Manifest, logits: common.Manifest, student: common.Manifest, out_dir: Path,
    parent_run_id: str | None = None,
) -> common.Manifest:
    """Evaluate one student; with `parent_run_id`, its metrics go to MLflow as `final/*`
    (`tasks.tracking.log_evaluation`: on the student's run when it trained in this pipeline run)."""
    s = student["meta"]
    if "failed" in s:
        # failure is a result: every output of the DVC stage is written (an empty reliability
        # diagram marked failed), so `dvc repro` goes on to aggregate, which marks the method
        metrics = {"method": s["method"], "seed": s["seed"], "failed": s["failed"]}
        artifacts.write_json(Path(out_dir) / RELIABILITY, failed_diagram(cfg.evaluation.ece_bins, s["failed"]))
        print(f"evaluate {s['method']} seed {s['seed']}: the student failed ({s['failed']})")
    else:
        ds = load_dataset(Path(data["dir"]) / "dataset.pt")
        model = load_student(cfg, data, student)
        with time_account.charge("evaluation"):
            last, test_logits = evaluate_model(model, ds, cfg.evaluation.ece_bins)
            target = ds.rows(ds.y_test)
            if ds.kind == "tokens":
                # the cache holds the teacher's top-K per position: agreement is exact (its top-1 is
                # in the top-K), the KL is to the teacher restricted to its top-K (kdlib.topk)
                test_cache = TokenCache(Path(logits["dir"]), TEST_TOKENS)
                teacher_test = test_cache.restricted_logits(torch.arange(test_cache.windows))
                last.update(agreement=agreement(test_logits, teacher_test), kl_to_teacher=kl_to_teacher(test_logits, teacher_test))
            else:
                last.update(teacher_fidelity(test_logits, LogitCache(Path(logits["dir"])).test, target))
            diagram = reliability_diagram(test_logits, target, cfg.evaluation.ece_bins)
        artifacts.write_json(Path(out_dir) / RELIABILITY, diagram)
        history = json.loads((Path(student["dir"]) / HISTORY).read_text())
        metrics = {
            "method": s["method"],
            "seed": s["seed"],
            **last,
            "best_top1": s["best_top1"],
            "best_epoch": s["best_epoch"],
            "last_epoch": len(history),
            **{k: v for k, v in history[-1].items() if k.startswith("nc/")},
        }
        ppl = f", validation perplexity {last['val_ppl']:.2f}" if "val_ppl" in last else ""
        print(f"evaluate {s['method']} seed {s['seed']}: top-1 {last['top1']:.2f} (best {s['best_top1']:.2f} at epoch {s['best_epoch']}){ppl}")
    artifacts.write_json(Path(out_dir) / METRICS, metrics)
    meta = {"metrics": metrics, "student_key": student["key"], "student_dir": student["dir"]}
    manifest = artifacts.write_manifest(out_dir, STEP, key(cfg, data, logits, student), meta)
    tracking.log_evaluation(cfg, parent_run_id, student, metrics, [Path(out_dir) / METRICS, Path(out_dir) / RELIABILITY],
                            manifest["key"])
    return manifest


def cached(
    cfg: StudyConfig, data: common.Manifest, logits: common.Manifest, student: common.Manifest,
    parent_run_id: str | None = None,
) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store (`parent_run_id`: see `run`)."""
    k = key(cfg, data, logits, student)
    return common.run_in_store(cfg, STEP, k, lambda out: run(cfg, data, logits, student, out, parent_run_id),
                               entry=common.student_entry(student["meta"]["method"], student["meta"]["seed"]))


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key, task_run_name="evaluate[{student[meta][method]}, seed {student[meta][seed]}]")


def main() -> None:
    cfg, args = common.cli(STEP, __doc__, per_student=True)
    data = common.dvc_input("prepare_data")
    logits = common.dvc_input("cache_logits", teacher=fidelity_teacher(cfg, args.method))
    student = common.dvc_input("train_student", args.method, args.seed)
    with tracking.dvc_pipeline(cfg) as parent:
        run(cfg, data, logits, student, common.dvc_dir(STEP, args.method, args.seed), parent)


if __name__ == "__main__":
    main()
