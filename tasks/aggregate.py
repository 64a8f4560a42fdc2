"""aggregate: the study's results table (polars), written as CSV, Markdown and JSON, and logged to MLflow."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from kdlib import artifacts
from kdlib.config import StudyConfig
from tasks import common, tracking

STEP = "aggregate"
CODE = ("tasks/aggregate.py", "tasks/tracking.py")
METRICS = ("top1", "best_top1", "top5", "nll", "ece", "agreement", "kl_to_teacher")


def key(cfg: StudyConfig, teacher: common.Manifest, evaluations: list[common.Manifest]) -> str:
    slice_ = {
        "study": cfg.study, "methods": cfg.students.methods, "seeds": cfg.students.seeds,
        "tracking": cfg.tracking.model_dump(),
    }
    return common.cache_key(STEP, slice_, [teacher, *evaluations], CODE)


def per_run_table(evaluations: list[common.Manifest]) -> pl.DataFrame:
    """One row per student; a failed student keeps its row, with null metrics and its error."""
    rows = [{"failed": None, **e["meta"]["metrics"]} for e in evaluations]
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("failed").cast(pl.String))


def summarize(runs: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """One row per method: mean and std over seeds of each metric, sorted by last-epoch top-1."""
    aggs = [pl.col("failed").is_null().sum().alias("seeds"), pl.col("failed").is_not_null().sum().alias("failed")]
    for m in METRICS:
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std().fill_null(0.0).alias(f"{m}_std")]
    aggs += [pl.col("best_epoch").mean().alias("best_epoch_mean"), pl.col("last_epoch").max().alias("last_epoch")]
    table = runs.group_by("method").agg(aggs)
    rank = {name: i for i, name in enumerate(order)}
    return table.with_columns(
        pl.col("method").replace_strict(rank, return_dtype=pl.Int64).alias("study_order")
    ).sort(["top1_mean", "study_order"], descending=[True, False], nulls_last=True).drop("study_order")


def curves(evaluations: list[common.Manifest]) -> pl.DataFrame:
    """Per-epoch test top-1 and training loss, mean over seeds, one row per (method, epoch)."""
    rows = []
    for e in evaluations:
        if "failed" in e["meta"]["metrics"]:
            continue
        method = e["meta"]["metrics"]["method"]
        for record in json.loads((Path(e["meta"]["student_dir"]) / "history.json").read_text()):
            rows.append({"method": method, "epoch": record["epoch"], "test_top1": record["test_top1"], "loss": record["loss"]})
    return (
        pl.DataFrame(rows)
        .group_by("method", "epoch")
        .agg(pl.col("test_top1").mean(), pl.col("loss").mean())
        .sort("method", "epoch")
    )


def to_markdown(table: pl.DataFrame, runs: pl.DataFrame, teacher: common.Manifest, cfg: StudyConfig) -> str:
    t = teacher["meta"]
    lines = [
        f"# {cfg.study}: {cfg.students.arch} students of a {t['arch']} teacher "
        f"(teacher top-1 {t['test']['top1']:.2f}%)",
        "",
        "Mean ± std over seeds. `top-1 last` is the final epoch's model, `top-1 best` the best epoch's "
        "test accuracy (as papers report). Agreement and KL are against the teacher on the test set.",
        "",
        "| method | seeds | top-1 last | top-1 best | best epoch | top-5 | NLL | ECE | agreement | KL to teacher |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.iter_rows(named=True):
        def pm(m: str, d: int = 2) -> str:
            return "—" if r[m + "_mean"] is None else f"{r[m + '_mean']:.{d}f} ± {r[m + '_std']:.{d}f}"

        seeds = f"{r['seeds']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")
        epochs = "—" if r["best_epoch_mean"] is None else f"{r['best_epoch_mean']:.1f}/{r['last_epoch']}"
        lines.append(
            f"| {r['method']} | {seeds} | {pm('top1')} | {pm('best_top1')} | {epochs} "
            f"| {pm('top5')} | {pm('nll', 3)} | {pm('ece')} | {pm('agreement')} | {pm('kl_to_teacher', 3)} |"
        )
    failed = runs.filter(pl.col("failed").is_not_null())
    if failed.height:
        lines += ["", "Failed runs (kept out of the means):", ""]
        lines += [f"- {f['method']} seed {f['seed']}: {f['failed']}" for f in failed.iter_rows(named=True)]
    return "\n".join(lines) + "\n"


def run(cfg: StudyConfig, teacher: common.Manifest, evaluations: list[common.Manifest], out_dir: Path) -> common.Manifest:
    out_dir = Path(out_dir)
    runs = per_run_table(evaluations)
    table = summarize(runs, cfg.students.methods)
    artifacts.write_text(out_dir / "summary.csv", table.write_csv())
    artifacts.write_text(out_dir / "summary.md", to_markdown(table, runs, teacher, cfg))
    artifacts.write_json(
        out_dir / "summary.json",
        {"study": cfg.study, "teacher": teacher["meta"], "methods": table.to_dicts(), "runs": runs.to_dicts()},
    )
    for (method,), curve in curves(evaluations).group_by("method"):
        artifacts.write_json(out_dir / "curves" / f"{method}.json", curve.drop("method").to_dicts())
    meta = {"rows": table.height}
    if cfg.tracking.enabled:
        meta["mlflow_parent_run_id"] = tracking.log_study(cfg, teacher, evaluations, out_dir)
    print(f"aggregate: results table in {out_dir / 'summary.md'}")
    return artifacts.write_manifest(out_dir, STEP, key(cfg, teacher, evaluations), meta)


def cached(cfg: StudyConfig, teacher: common.Manifest, evaluations: list[common.Manifest]) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store."""
    return common.run_in_store(cfg, STEP, key(cfg, teacher, evaluations), lambda out: run(cfg, teacher, evaluations, out))


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key)


def main() -> None:
    cfg, _ = common.cli(__doc__)
    teacher = artifacts.read_manifest(common.dvc_dir("train_teacher"))
    evaluations = [
        artifacts.read_manifest(common.dvc_dir("evaluate", m, s))
        for m in cfg.students.methods
        for s in cfg.students.seeds
    ]
    run(cfg, teacher, evaluations, common.dvc_dir(STEP))


if __name__ == "__main__":
    main()
