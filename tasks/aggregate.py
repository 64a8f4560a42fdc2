"""aggregate: the study's results table (polars), written as CSV, Markdown and JSON, and the study
report (`report.md`, `figures/`, see `tasks.report`): a deterministic artifact.

`publish` then does what belongs to one pipeline run, outside any hashed output: the
self-contained `report.html` with the run's provenance, and the MLflow parent run's files,
figures, tags and links to the runs that computed what this run reused (`tasks.tracking`)."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import scipy.stats

from kdlib import artifacts, time_account
from kdlib.config import MAIN_TEACHER, StudyConfig
from tasks import common, report, time_ledger, tracking, train_teacher
from tasks.evaluate import RELIABILITY

STEP = "aggregate"
CODE_ROOTS = ("tasks.aggregate",)
METRICS = ("val_ppl", "ppl", "val_nll", "top1", "best_top1", "top5", "nll", "ece", "agreement", "kl_to_teacher",
           "nontarget_rank_corr")
"""Averaged over seeds where the runs have them (the perplexities: token studies only)."""
CURVES = {"images": ("test_top1", "loss"), "tokens": ("test_top1", "test_nll", "loss")}
"""Per data kind, the per-epoch history values averaged into the curves, besides every `grad_cos/*` and `nc/*` one."""


def key(
    cfg: StudyConfig, teacher: common.Manifest, evaluations: list[common.Manifest],
    teachers: dict[str, common.Manifest] | None = None, data: common.Manifest | None = None,
    logits: common.Manifest | None = None,
) -> str:
    """`teachers`: the extra and fine-tuned ones, by name; `data`: the data set (its size is in the report);
    `logits`: `teacher`'s logit cache, an input only when it is a token cache (its bytes per token are in
    the report), so an image study keeps its key."""
    cache = token_cache(logits)
    inputs = [teacher, *(teachers[n] for n in sorted(teachers or {})), *evaluations, *([data] if data else []),
              *([cache] if cache else [])]
    return common.cache_key(STEP, config_slice(cfg), inputs, CODE_ROOTS)


def token_cache(logits: common.Manifest | None) -> common.Manifest | None:
    """`logits` when it is a token cache (the report states its size), else None."""
    return logits if logits is not None and logits["meta"].get("kind") == "tokens" else None


def data_kind(data: common.Manifest | None, runs: pl.DataFrame) -> str:
    """`tokens` or `images` (a key of `report.PRIMARY`): the data set's `kind`; without its manifest,
    `tokens` when the runs report validation perplexity."""
    if data is not None:
        return "tokens" if data["meta"].get("kind") == "tokens" else "images"
    return "tokens" if "val_ppl" in runs.columns else "images"


def config_slice(cfg: StudyConfig) -> dict[str, Any]:
    """The extra and fine-tuned teachers' names join the slice only when there are some, so a
    study without them keeps its key (and its cached results)."""
    slice_ = {
        "study": cfg.study, "methods": cfg.students.methods, "seeds": cfg.students.seeds,
        "tracking": cfg.tracking.model_dump(),
    }
    others = sorted([*cfg.teachers, *cfg.finetuned_teachers])
    if others:
        slice_["teachers"] = others
    return slice_


def teacher_rows(teacher: common.Manifest, teachers: dict[str, common.Manifest]) -> list[dict[str, Any]]:
    """One row per teacher of the study, `teacher` first, then in the order given: how it was
    made (`trained` from scratch, or `finetuned` from `teacher` with a regularizer and its
    lambda), best-epoch and last-epoch test top-1 (%), best epoch and epochs run.

    Every number is read from the teacher's manifest and history, so the rows are the
    teachers' own records. A fine-tuned teacher whose `base_key` is not `teacher`'s key was
    made from another teacher than this study's: that is an error, not a row to trust.
    """
    rows = []
    for name, m in {MAIN_TEACHER: teacher, **teachers}.items():
        meta = m["meta"]
        finetuned = m["step"] == "finetune_teacher"
        if finetuned and meta["base_key"] != teacher["key"]:
            raise ValueError(f"finetuned_teachers.{name}: fine-tuned from teacher {meta['base_key']}, "
                             f"not this study's teacher {teacher['key']} ({m['dir']})")
        history = json.loads((Path(m["dir"]) / "history.json").read_text())
        rows.append({
            "name": name, "arch": meta["arch"], "made": train_teacher.made(m),
            "regularizer": meta.get("regularizer"), "lam": meta.get("lam"),
            "from": MAIN_TEACHER if finetuned else None,
            "best_top1": meta["best_top1"], "top1": meta["test"]["top1"],
            "best_epoch": meta["best_epoch"], "epochs": len(history), "key": m["key"],
        })
    return rows


def per_run_table(evaluations: list[common.Manifest]) -> pl.DataFrame:
    """One row per student; a failed student keeps its row, with null metrics and its error."""
    rows = [{"failed": None, **e["meta"]["metrics"]} for e in evaluations]
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("failed").cast(pl.String))


def summarize(runs: pl.DataFrame, order: list[str], primary: report.Primary = report.PRIMARY["images"]) -> pl.DataFrame:
    """One row per method: mean and std over seeds of each metric (and of the end-of-training
    `nc/*` metrics; null for a method that has none, and the std null below two seeds),
    `<primary>_vs_<ref>` = its primary mean minus that of `kd` / `ce` when they ran, sorted by
    the primary metric, best first: last-epoch top-1 (descending), or for a token study
    validation perplexity (ascending); ties keep the study's order."""
    aggs = [pl.col("failed").is_null().sum().alias("seeds"), pl.col("failed").is_not_null().sum().alias("failed")]
    present = [m for m in METRICS if m in runs.columns]  # a study of only failed runs has none
    for m in [*present, *sorted(c for c in runs.columns if c.startswith("nc/"))]:
        # std of fewer than two values is null, not 0: one seed has no spread to report
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std().alias(f"{m}_std")]
    aggs += [pl.col("best_epoch").mean().alias("best_epoch_mean"), pl.col("last_epoch").max().alias("last_epoch")]
    table = runs.group_by("method").agg(aggs)
    mean = f"{primary.metric}_mean"
    if mean not in table.columns:  # a study of only failed runs
        table = table.with_columns(pl.lit(None, pl.Float64).alias(mean))
    for ref in report.REFERENCES:
        ref_value = table.filter(pl.col("method") == ref)[mean]
        if len(ref_value) and ref_value[0] is not None:
            table = table.with_columns((pl.col(mean) - ref_value[0]).alias(f"{primary.metric}_vs_{ref}"))
    rank = {name: i for i, name in enumerate(order)}
    return table.with_columns(
        pl.col("method").replace_strict(rank, return_dtype=pl.Int64).alias("study_order")
    ).sort([mean, "study_order"], descending=[primary.higher_is_better, False], nulls_last=True).drop("study_order")


def paired(diffs: list[float], higher_is_better: bool = True) -> tuple[float | None, str, float | None]:
    """(mean difference, "wins/ties/losses", two-sided paired t-test p) of per-seed differences;
    a win is a positive difference, or a negative one for a metric where lower is better.

    p is None with fewer than two pairs or when every difference is the same (no variance;
    accuracies are ratios of counts, so "the same" allows float rounding).
    """
    if not diffs:
        return None, "0/0/0", None
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    if not higher_is_better:
        wins, losses = losses, wins
    record = f"{wins}/{sum(d == 0 for d in diffs)}/{losses}"
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2 or max(diffs) - min(diffs) <= 1e-9 * max(1.0, *(abs(d) for d in diffs)):
        return mean, record, None
    return mean, record, float(scipy.stats.ttest_1samp(diffs, 0.0).pvalue)


def comparisons(runs: pl.DataFrame, order: list[str], primary: report.Primary = report.PRIMARY["images"]) -> list[dict[str, Any]]:
    """Each method against `kd` and `ce` (when they ran), paired by seed, on the primary's paired
    metrics: last and best top-1, or for a token study validation and test perplexity."""
    ok = runs.filter(pl.col("failed").is_null())
    metrics = [metric for metric, _ in primary.paired]
    out = []
    for ref in report.REFERENCES:
        if not ok.height or any(m not in ok.columns for m in metrics):
            break
        base = ok.filter(pl.col("method") == ref).select("seed", *[pl.col(m).alias(f"ref_{m}") for m in metrics])
        if not base.height:
            continue
        for method in order:
            if method == ref:
                continue
            both = ok.filter(pl.col("method") == method).join(base, on="seed").sort("seed")
            if not both.height:
                continue
            row: dict[str, Any] = {"method": method, "reference": ref, "n": both.height, "seeds": both["seed"].to_list()}
            for metric in metrics:
                diffs = (both[metric] - both[f"ref_{metric}"]).to_list()
                row[f"{metric}_diff_mean"], row[f"{metric}_record"], row[f"{metric}_p"] = paired(diffs, primary.higher_is_better)
            out.append(row)
    return out


def curves(evaluations: list[common.Manifest], kind: str = "images") -> pl.DataFrame:
    """Per-epoch test top-1 (and for a token study the test per-token NLL), training loss,
    gradient cosines and NC metrics, mean over seeds, one row per (method, epoch); a value a
    method does not record is null."""
    rows = []
    for e in evaluations:
        if "failed" in e["meta"]["metrics"]:
            continue
        method = e["meta"]["metrics"]["method"]
        for record in json.loads((Path(e["meta"]["student_dir"]) / "history.json").read_text()):
            kept = {k: v for k, v in record.items() if k in CURVES[kind] or k.startswith(("grad_cos/", "nc/"))}
            rows.append({"method": method, "epoch": record["epoch"], **kept})
    table = pl.DataFrame(rows, infer_schema_length=None)
    values = [c for c in table.columns if c not in ("method", "epoch")]
    return table.group_by("method", "epoch").agg(pl.col(values).mean()).sort("method", "epoch")


def conflict_summary(curve: pl.DataFrame, order: list[str]) -> list[dict[str, Any]]:
    """Mean over epochs (of the per-epoch means over seeds) of each pair's head and backbone
    cosine; None where it does not exist (terms on separate heads have no head cosine)."""
    out = []
    for method in order:
        c = curve.filter(pl.col("method") == method)
        pairs = sorted({col.rsplit("/", 1)[-1] for part in ("head", "backbone") for col in report.conflict_columns(c, part)})
        for pair in pairs:
            head, backbone = f"grad_cos/head/{pair}", f"grad_cos/backbone/{pair}"
            head_mean = c[head].mean() if head in c.columns else None
            backbone_mean = c[backbone].mean() if backbone in c.columns else None
            if head_mean is None and backbone_mean is None:
                continue
            out.append({"method": method, "pair": pair.replace("_vs_", " vs "), "head": head_mean, "backbone": backbone_mean})
    return out


def pooled_reliability(evaluations: list[common.Manifest]) -> dict[str, dict[str, list[float]]]:
    """Each method's reliability-diagram sums added over its seeds."""
    pooled: dict[str, dict[str, list[float]]] = {}
    for e in evaluations:
        if "failed" in e["meta"]["metrics"]:
            continue
        diagram = json.loads((Path(e["dir"]) / RELIABILITY).read_text())
        into = pooled.setdefault(e["meta"]["metrics"]["method"], {k: [0.0] * len(v) for k, v in diagram.items()})
        for k, v in diagram.items():
            into[k] = [a + b for a, b in zip(into[k], v)]
    return pooled


def to_markdown(
    table: pl.DataFrame, runs: pl.DataFrame, teacher: common.Manifest, cfg: StudyConfig,
    teachers: list[dict[str, Any]] | None = None, kind: str = "images",
) -> str:
    """`summary.md`: the results table (a token study's with its perplexities first, sorted by
    validation perplexity, and its top-1 named token accuracy), failed runs, the teachers."""
    t = teacher["meta"]
    scores = report.score_columns(report.PRIMARY[kind])
    if kind == "tokens":
        headline = (f"teacher val. perplexity {report.fmt(t['test'].get('val_ppl'))}, "
                    f"token accuracy {t['test']['top1']:.2f}%")
        intro = ("Mean ± std over seeds, sorted by validation perplexity (lower is better). `val. perplexity` / "
                 "`test perplexity`: exp of the mean per-token NLL on the validation / test windows; `token acc. last` "
                 "is the final epoch's model's top-1 over the test tokens, `token acc. best` the best epoch's. "
                 "Agreement and KL are against the teacher (restricted to its top-K logits) on the test set.")
    else:
        headline = f"teacher top-1 {t['test']['top1']:.2f}%"
        intro = ("Mean ± std over seeds. `top-1 last` is the final epoch's model, `top-1 best` the best epoch's "
                 "test accuracy (as papers report). Agreement and KL are against the teacher on the test set.")
    header = ["method", "seeds", *[h for h, _, _ in scores], "best epoch", "top-5", "NLL", "ECE", "agreement", "KL to teacher"]
    lines = [
        f"# {cfg.study}: {cfg.students.arch} students of a {t['arch']} teacher ({headline})",
        "",
        intro,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in table.iter_rows(named=True):
        def pm(m: str, d: int = 2) -> str:
            return report.pm(r, m, d)

        seeds = f"{r['seeds']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")
        epochs = report.NA if r["best_epoch_mean"] is None else f"{r['best_epoch_mean']:.1f}/{r['last_epoch']}"
        cells = [r["method"], seeds, *[pm(k, d) for _, k, d in scores], epochs,
                 pm("top5"), pm("nll", 3), pm("ece"), pm("agreement"), pm("kl_to_teacher", 3)]
        lines.append("| " + " | ".join(cells) + " |")
    failed = runs.filter(pl.col("failed").is_not_null())
    if failed.height:
        lines += ["", "Failed runs (kept out of the means):", ""]
        lines += [f"- {f['method']} seed {f['seed']}: {f['failed']}" for f in failed.iter_rows(named=True)]
    if teachers and len(teachers) > 1:  # the extra and fine-tuned teachers beside `teacher`
        table_md = report.to_markdown([report.teacher_table(teachers)]).rstrip("\n")
        lines += ["", "Teachers (test top-1 %, best epoch / epochs run):", "", table_md]
    return "\n".join(lines) + "\n"


def setup(cfg: StudyConfig, data: common.Manifest | None, logits: common.Manifest | None = None) -> dict[str, Any]:
    """What the study ran on, for the report's header: the data set (its size from the
    prepare_data manifest; for tokens also its kind, corpus, validation windows, context and
    tokens per split), the teacher, the students' schedule and, for a token study given its
    cache (`logits`), the cache's bytes per token against a dense fp16 cache's."""
    out: dict[str, Any] = {
        "data": {"source": cfg.data.source, **({k: data["meta"][k] for k in ("name", "num_train", "num_test",
                                                                               "num_classes", "shape")} if data else {})},
        "teacher": {"arch": cfg.teacher.arch, "schedule": cfg.teacher.schedule.model_dump()},
        "students": {"arch": cfg.students.arch, "seeds": cfg.students.seeds, "schedule": cfg.students.schedule.model_dump()},
    }
    if data is not None and data["meta"].get("kind") == "tokens":
        corpus = cfg.data.path or ", ".join(cfg.data.corpus)
        out["data"].update({"kind": "tokens", "corpus": corpus,
                            **{k: data["meta"][k] for k in ("num_val", "context", "tokens")}})
    cache = token_cache(logits)
    if cache is not None:
        out["cache"] = {k: cache["meta"][k] for k in ("topk", "bytes_per_token", "dense_bytes_per_token")}
    return out


@time_account.charged("writing")
def run(
    cfg: StudyConfig, teacher: common.Manifest, evaluations: list[common.Manifest], out_dir: Path,
    teachers: dict[str, common.Manifest] | None = None, data: common.Manifest | None = None,
    logits: common.Manifest | None = None,
) -> common.Manifest:
    """`teachers`: the manifests of the extra and fine-tuned teachers, by name (none: only
    `teacher`); `data`: the data set's manifest, for the report's header, and its kind: a
    token study is ranked and compared on validation perplexity (`report.PRIMARY`);
    `logits`: `teacher`'s cache, whose bytes per token a token study's header states.

    The whole folder is built in a hidden sibling and swapped in for `out_dir` at once
    (`artifacts.staged_dir`): a crash or an error leaves the previous results untouched, never
    a mix of two studies, and stale files of the previous study do not survive a success."""
    out_dir = Path(out_dir)
    teachers = teachers or {}
    runs = per_run_table(evaluations)
    kind = data_kind(data, runs)
    primary = report.PRIMARY[kind]
    table = summarize(runs, cfg.students.methods, primary)
    rows = teacher_rows(teacher, teachers)
    with artifacts.staged_dir(out_dir) as staging:
        artifacts.write_text(staging / "summary.csv", table.write_csv())
        artifacts.write_text(staging / "summary.md", to_markdown(table, runs, teacher, cfg, rows, kind))
        per_epoch = curves(evaluations, kind)
        summary = {
            "study": cfg.study, "setup": setup(cfg, data, logits), "teacher": teacher["meta"], "teachers": rows,
            "methods": table.to_dicts(), "runs": runs.to_dicts(),
            "comparisons": comparisons(runs, cfg.students.methods, primary),
            "conflict": conflict_summary(per_epoch, cfg.students.methods),
            "reliability": pooled_reliability(evaluations),
        }
        artifacts.write_json(staging / "summary.json", summary)
        for (method,), curve in per_epoch.group_by("method"):
            artifacts.write_json(staging / "curves" / f"{method}.json", curve.drop("method").to_dicts())
        ablation = [m for m in cfg.students.methods if cfg.method_settings(m).method in report.DHKD_ABLATION]
        written = report.write(summary, per_epoch, cfg.students.methods, staging, ablation or None)
        manifest = artifacts.write_manifest(
            staging, STEP, key(cfg, teacher, evaluations, teachers, data, logits), {"rows": table.height}, final_dir=out_dir
        )
    print(f"aggregate: report {out_dir / 'report.md'} (+ {len(written) - 1} figures)")
    print(f"aggregate: results table in {out_dir / 'summary.md'}")
    return manifest


def cached(
    cfg: StudyConfig, teacher: common.Manifest, evaluations: list[common.Manifest],
    teachers: dict[str, common.Manifest] | None = None, data: common.Manifest | None = None,
    logits: common.Manifest | None = None,
) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store."""
    return common.run_in_store(
        cfg, STEP, key(cfg, teacher, evaluations, teachers, data, logits),
        lambda out: run(cfg, teacher, evaluations, out, teachers, data, logits),
    )


def provenance(cfg: StudyConfig, parent_run_id: str | None, front_door: str) -> dict[str, str]:
    """Where one pipeline run's report comes from: commit, date, front door, MLflow parent run."""
    if parent_run_id is not None:
        run = f"`{parent_run_id}` (experiment `{cfg.tracking.experiment}`, {tracking.tracking_uri(cfg)})"
    else:
        run = "none (tracking off)" if not cfg.tracking.enabled else "none (MLflow failed: see the log)"
    return {"commit": f"`{tracking.git_commit()}`", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "front door": tracking.FRONT_DOORS.get(front_door, front_door), "MLflow parent run": run}


def publish(
    cfg: StudyConfig, results: common.Manifest, report_html: Path, parent_run_id: str | None, front_door: str,
    teachers: dict[str, common.Manifest], evaluations: list[common.Manifest], tags: dict[str, str] | None = None,
    time_spent: tuple[str, dict[str, Any]] | None = None,
) -> Path:
    """One pipeline run's report and MLflow parent: writes the self-contained `report_html`
    (outside the artifact: it names this run), then logs the results to the parent run and
    links the steps this run reused (`tasks.tracking.publish`). `front_door`: "dvc" or
    "prefect"; `teachers`: every teacher's manifest by name, `teacher` included; `time_spent`:
    the front door's name and its `tasks.time_ledger.summary`, the report's last section.
    Returns the report's path."""
    results_dir = Path(results["dir"])
    summary = json.loads((results_dir / "summary.json").read_text())
    path = report.write_html(summary, results_dir, Path(report_html), provenance(cfg, parent_run_id, front_door), time_spent)
    print(f"aggregate: self-contained report {path}")
    if parent_run_id is None:
        return path
    steps = [(m["step"], tracking.teacher_run_name(name, m["meta"]["arch"]), m["key"]) for name, m in teachers.items()]
    steps += [("train_student", f"{e['meta']['metrics']['method']} seed {e['meta']['metrics']['seed']}",
               e["meta"]["student_key"]) for e in evaluations]
    files = [results_dir / name for name in ("summary.md", "summary.csv", "summary.json", "report.md")] + [path]
    figures = sorted((results_dir / report.FIGURES).glob("*.png"))
    best = summary["methods"][0] if summary["methods"] else None
    primary = report.PRIMARY[report.kind_of(summary)]
    value = None if best is None else best.get(f"{primary.metric}_mean")
    headline = "" if value is None else (
        f"**Best** `{best['method']}`: {'top-1' if primary.metric == 'top1' else primary.name} "
        f"{report.fmt(value)}{primary.unit} (mean of {best['seeds']} seed(s)).")
    description = tracking.describe(cfg, front_door, summary["setup"]["data"] if "num_train" in summary["setup"]["data"]
                                    else None, headline)
    tracking.publish(cfg, parent_run_id, steps, files, figures,
                     {"aggregate_key": results["key"], "results_dir": str(results_dir), **(tags or {})}, description)
    return path


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key)


def dvc_teacher(step: str, name: str) -> common.Manifest:
    """An extra or fine-tuned teacher's manifest (artifacts/teachers/<name>), checked against
    its logit cache. The aggregate stage depends on artifacts/logits, which always exists,
    not on artifacts/teachers, which a study without such teachers lacks (DVC stops on a
    missing dependency): each cache pins its teacher's key, so a changed teacher re-runs its
    cache and so this stage, and a teacher folder that does not match its cache is refused."""
    manifest = common.dvc_input(step, teacher=name)
    cache = common.dvc_input("cache_logits", teacher=name)
    if cache["meta"]["teacher_key"] != manifest["key"]:
        print(f"{common.dvc_dir(step, teacher=name)} (key {manifest['key']}) is not the teacher of "
              f"{common.dvc_dir('cache_logits', teacher=name)} (key {cache['meta']['teacher_key']}): run `dvc repro`",
              file=sys.stderr)
        raise SystemExit(2)
    return manifest


def main() -> None:
    cfg, _ = common.cli(STEP, __doc__)
    data = common.dvc_input("prepare_data")
    teacher = common.dvc_input("train_teacher")
    teachers = {name: dvc_teacher("train_teacher", name) for name in cfg.teachers}
    teachers.update({name: dvc_teacher("finetune_teacher", name) for name in cfg.finetuned_teachers})
    evaluations = [
        common.dvc_input("evaluate", m, s)
        for m in cfg.students.methods
        for s in cfg.students.seeds
    ]
    logits = common.dvc_input("cache_logits")  # the report states a token cache's size
    with tracking.dvc_pipeline(cfg, last=True) as parent:
        results = run(cfg, teacher, evaluations, common.dvc_dir(STEP), teachers, data, logits)
        # results/report.html is this repro's: written beside the artifact, not in its manifest
        session = time_ledger.dvc_session()
        spent = None if session is None else ("`dvc repro`", time_ledger.so_far(*session, time_account.current()))
        publish(cfg, results, common.dvc_dir(STEP) / "report.html", parent, "dvc",
                {MAIN_TEACHER: teacher, **teachers}, evaluations, time_spent=spent)


if __name__ == "__main__":
    main()
