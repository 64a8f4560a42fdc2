"""The study report: `report.md`, `report.html` and the PNG figures they show.

Rendered by `aggregate` from the data it has just written (`summary.json` and the
per-method curves), so every number in the report is one of `summary.json`'s. The
document is built once as a list of blocks and written twice (Markdown and HTML), so the
two versions cannot drift apart. Figures use matplotlib's Agg backend; a method keeps one
colour in every figure (its place in `students.methods`).

`report.md` is part of the aggregate artifact (deterministic: the same results give the
same bytes). `report.html` is written once per pipeline run (`write_html`): the same
document, self-contained (figures embedded as data URIs, so it renders in MLflow's
sandboxed artifact preview and anywhere it is copied), with the run's provenance in its
header (commit, date, MLflow parent run), which would break the artifact's determinism.

Statistics are marked where they are weak: a cell resting on fewer than `MIN_SEEDS` seeds
carries a dagger and the table a footnote, an undefined quantity is `n/a`, and the written
conclusion (`conclusion`) only says what the numbers support.
"""
from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import polars as pl  # noqa: E402

from kdlib import artifacts  # noqa: E402

FIGURES = "figures"
REFERENCES = ("kd", "ce")
DHKD_ABLATION = ("kd", "dkd", "binarykl", "binarykl_norm", "ce+binarykl", "ce+binarykl_norm", "dhkd", "dhkd_kd")
"""Registry methods whose gradient-conflict curves are drawn (every multi-term method is in the table)."""
NC_COLUMNS = (
    ("nc/nc1", "NC1", 3), ("nc/means_norm_cv", "NC2 means: norm CV", 3), ("nc/means_cos_dev", "NC2 means: angle dev", 3),
    ("nc/classifier_norm_cv", "NC2 head: norm CV", 3), ("nc/classifier_cos_dev", "NC2 head: angle dev", 3),
    ("nc/classifier_nc3", "NC3 head", 3), ("nc/classifier_norm", "head norm", 2), ("nc/aux_head_nc3", "NC3 aux head", 3),
)
Block = tuple[Any, ...]
NA = "n/a"
MIN_SEEDS = 3
"""Below this many seeds a mean ± std or a paired test is marked as resting on too few seeds."""
WEAK = "†"
CEILING = 99.0
"""Top-1 (%) at or above which every arm counts as at the ceiling: the data cannot separate the methods."""


# --------------------------------------------------------------------------- #
# formatting: one function per number kind, used by both the report and its test
# --------------------------------------------------------------------------- #
def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return NA
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def how_made(row: dict[str, Any]) -> str:
    """A teacher row's `made` in words (rows of `tasks.aggregate.teacher_rows`): `trained`,
    `released checkpoint`, `untrained (random init)`, or e.g. `fine-tuned from teacher (mcmi,
    λ = -0.5)` (the `ce` regularizer has no lambda)."""
    if row["made"] != "finetuned":
        return {"checkpoint": "released checkpoint", "untrained": "untrained (random init)"}.get(row["made"], row["made"])
    lam = "" if row["lam"] is None else f", λ = {row['lam']:g}"
    return f"fine-tuned from {row['from']} ({row['regularizer']}{lam})"


def teacher_table(rows: list[dict[str, Any]]) -> Block:
    """The teachers' table block (`summary.md` and the report show the same one)."""
    return ("table", ["teacher", "arch", "made", "top-1 last", "top-1 best", "best epoch"], [
        [t["name"], t["arch"], how_made(t), fmt(t["top1"]), fmt(t["best_top1"]), f"{t['best_epoch']}/{t['epochs']}"]
        for t in rows
    ])


def fmt_p(p: float | None) -> str:
    """A p-value to two significant digits (0.00031, not 0.000)."""
    return NA if p is None else f"{p:.2g}"


def pm(row: dict[str, Any], metric: str, digits: int = 2) -> str:
    """`mean ± std` of a summary row's metric (daggered when it rests on fewer than
    `MIN_SEEDS` seeds), or n/a when the method has none."""
    mean = row.get(f"{metric}_mean")
    if mean is None:
        return NA
    weak = WEAK if row.get("seeds", MIN_SEEDS) < MIN_SEEDS else ""
    return f"{fmt(mean, digits)} ± {fmt(row.get(f'{metric}_std'), digits)}{weak}"


# --------------------------------------------------------------------------- #
# figures
# --------------------------------------------------------------------------- #
def method_colours(methods: list[str]) -> dict[str, Any]:
    """One colour per method, by its place in the study: tab10, or past ten methods tab20
    followed by tab20b and tab20c, so up to 60 methods never share a colour."""
    maps = ("tab10",) if len(methods) <= 10 else ("tab20", "tab20b", "tab20c")
    palette = [plt.get_cmap(name)(i) for name in maps for i in range(plt.get_cmap(name).N)]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def save_figure(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    artifacts.write_bytes(path, buffer.getvalue())


def accuracy_figure(curves: pl.DataFrame, colours: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, colour in colours.items():
        c = curves.filter(pl.col("method") == method)
        if c.height:
            ax.plot(c["epoch"], c["test_top1"], marker="o", markersize=3, color=colour, label=method)
    ax.set(xlabel="epoch", ylabel="test top-1 (%), mean over seeds", title="Test accuracy per epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    save_figure(fig, path)


def conflict_columns(curves: pl.DataFrame, part: str) -> list[str]:
    return sorted(c for c in curves.columns if c.startswith(f"grad_cos/{part}/"))


def conflict_figure(curves: pl.DataFrame, colours: dict[str, Any], path: Path) -> None:
    """Cosine between each pair of loss terms' gradients per epoch, head and backbone side by
    side, for the methods in `colours`."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = ("-", "--", ":", "-.")
    for ax, part in zip(axes, ("head", "backbone")):
        for method, colour in colours.items():
            c = curves.filter(pl.col("method") == method)
            pairs = [col for col in conflict_columns(c, part) if c[col].is_not_null().any()]
            for i, col in enumerate(pairs):
                pair = col.rsplit("/", 1)[-1].replace("_vs_", " vs ")
                label = f"{method}: {pair}" if part == "head" else None
                ax.plot(c["epoch"], c[col], styles[i % len(styles)], marker="o", markersize=3, color=colour, label=label)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(xlabel="epoch", title=f"{part} parameters", ylim=(-1.05, 1.05))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine of the two terms' gradients")
    fig.suptitle("Gradient conflict on the fixed probe batch (< 0: the terms pull apart)")
    fig.tight_layout()
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    save_figure(fig, path)


def collapse_figure(methods: list[dict[str, Any]], colours: dict[str, Any], path: Path) -> None:
    """Bars of the end-of-training NC metrics per method (mean over seeds, std as error bars)."""
    panels = [(key, label) for key, label, _ in NC_COLUMNS if key != "nc/classifier_norm" and any(r.get(f"{key}_mean") is not None for r in methods)]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        shown = [r for r in methods if r.get(f"{key}_mean") is not None]
        ax.bar(range(len(shown)), [r[f"{key}_mean"] for r in shown], yerr=[r[f"{key}_std"] or 0.0 for r in shown],
               color=[colours[r["method"]] for r in shown], capsize=3)
        ax.set_xticks(range(len(shown)), [r["method"] for r in shown], rotation=45, ha="right")
        ax.set(title=label, ylabel=label, xlabel="method")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Neural collapse at the end of training (train set; lower = more collapsed)")
    fig.tight_layout()
    save_figure(fig, path)


def nc_curves_figure(curves: pl.DataFrame, colours: dict[str, Any], path: Path) -> None:
    """NC1 and the head's NC3 over the epochs at which they were measured (`evaluation.nc_every`)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, label) in zip(axes, (("nc/nc1", "NC1"), ("nc/classifier_nc3", "NC3 head"))):
        for method, colour in colours.items():
            c = curves.filter((pl.col("method") == method) & pl.col(key).is_not_null())
            if c.height:
                ax.plot(c["epoch"], c[key], marker="o", markersize=3, color=colour, label=method)
        ax.set(xlabel="epoch", ylabel=label, title=f"{label} during training")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, frameon=False)
    save_figure(fig, path)


def has_nc_curves(curves: pl.DataFrame) -> bool:
    """True when some method measured NC at more than one epoch."""
    if "nc/nc1" not in curves.columns:
        return False
    counts = curves.filter(pl.col("nc/nc1").is_not_null()).group_by("method").len()
    return bool(counts.height) and counts["len"].max() > 1


def reliability_figure(reliability: dict[str, dict[str, list[float]]], methods: list[dict[str, Any]], colours: dict[str, Any], path: Path) -> None:
    """Accuracy against mean confidence per bin, pooled over seeds; the diagonal is perfect calibration."""
    names = [m for m in colours if m in reliability]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    ece = {r["method"]: r.get("ece_mean") for r in methods}
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.3 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, method in zip(axes.flat, names):
        d = reliability[method]
        bins = len(d["count"])
        width = 1.0 / bins
        centres = [(b + 0.5) * width for b in range(bins)]
        acc = [c / n if n else 0.0 for c, n in zip(d["correct"], d["count"])]
        conf = [s / n if n else None for s, n in zip(d["confidence_sum"], d["count"])]
        ax.bar(centres, acc, width=width, color=colours[method], edgecolor="black", linewidth=0.4, label="accuracy")
        ax.plot([p for p, c in zip(centres, conf) if c is not None], [c for c in conf if c is not None],
                "k.", markersize=4, label="mean confidence")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfect calibration")
        ax.set(title=f"{method} (ECE {fmt(ece.get(method))}%)", xlim=(0, 1), ylim=(0, 1))
    for ax in axes[-1]:
        ax.set_xlabel("confidence")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes[0, 0].legend(loc="upper left", fontsize=7, frameon=False)
    fig.suptitle("Reliability diagrams (test set, pooled over seeds)")
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------- #
# the document
# --------------------------------------------------------------------------- #
def setup_rows(summary: dict[str, Any], provenance: dict[str, str] | None = None) -> list[list[str]]:
    """The header's rows: what the study ran on (from `summary.json`'s `setup`) and, for the
    per-run `report.html`, where it comes from (commit, date, MLflow parent run)."""
    setup, teacher = summary.get("setup", {}), summary["teacher"]
    data = setup.get("data") or {}
    if "num_train" in data:
        size = (f"{data['num_train']} train / {data['num_test']} test images, {data['num_classes']} classes, "
                f"{'×'.join(map(str, data['shape']))}")
        dataset = f"`{data['source']}` ({data['name']}): {size}"
    else:
        dataset = f"`{data['source']}`" if data.get("source") else NA
    students = setup.get("students") or {}
    rows = [
        ["study", f"`{summary['study']}`"],
        ["data set", dataset],
        ["teacher", f"`{teacher['arch']}` ({how_made(summary['teachers'][0]) if summary.get('teachers') else 'trained'}), "
                    f"test top-1 {fmt(teacher['test']['top1'])}%"],
    ]
    if students:
        sched = students["schedule"]
        rows += [
            ["students", f"`{students['arch']}`, seeds {', '.join(map(str, students['seeds']))}"],
            ["schedule", f"{sched['epochs']} epochs, batch {sched['batch_size']}, lr {sched['lr']:g} "
                         f"({sched['scheduler']}, {sched['warmup_epochs']} warmup), momentum {sched['momentum']:g}, "
                         f"weight decay {sched['weight_decay']:g}"],
        ]
    if provenance:
        rows += [[name, provenance[name]] for name in ("commit", "date", "front door", "MLflow parent run") if name in provenance]
    return rows


def seed_caveat(methods: list[dict[str, Any]]) -> str | None:
    """The caveat of a study whose statistics rest on fewer than `MIN_SEEDS` seeds, None otherwise."""
    counts = sorted({m["seeds"] for m in methods if m["seeds"]})
    if not counts or counts[0] >= MIN_SEEDS:
        return None
    few = counts[0]
    return (f"{WEAK} rests on fewer than {MIN_SEEDS} seeds (here {few}): a std from {few} value(s) and a paired t-test "
            f"with {max(few - 1, 0)} degree(s) of freedom are indications, not evidence; run more seeds before "
            "trusting a difference.")


def _exceeds_spread(diff: float | None, a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The difference of two methods' mean top-1 is larger than their seed spreads together (std + std)."""
    if diff is None or a["seeds"] < 2 or b["seeds"] < 2:
        return False
    return abs(diff) > (a["top1_std"] or 0.0) + (b["top1_std"] or 0.0)


def conclusion(summary: dict[str, Any]) -> list[str]:
    """A short written conclusion from the numbers of `summary.json`, never stronger than they are:
    the best method and its margin, which differences exceed the seed spread (std + std),
    what the paired tests can say, the DHKD diagnostics, and warnings when the teacher is no
    better than the CE student or every arm is at the ceiling."""
    methods = [m for m in summary["methods"] if m.get("top1_mean") is not None]
    if not methods:
        return ["Every student failed: there is nothing to compare."]
    out: list[str] = []
    by_name = {m["method"]: m for m in methods}
    best = methods[0]  # summary rows are sorted by last-epoch top-1
    fewest = min(m["seeds"] for m in methods)
    if len(methods) == 1:
        out.append(f"Only `{best['method']}` finished, at {fmt(best['top1_mean'])}% top-1: no comparison is possible.")
    else:
        runner = methods[1]
        margin = best["top1_mean"] - runner["top1_mean"]
        text = (f"`{best['method']}` has the highest last-epoch top-1, {fmt(best['top1_mean'])}%, "
                f"{fmt(margin)} points above `{runner['method']}` ({fmt(runner['top1_mean'])}%).")
        if fewest < 2:
            text += " With one seed there is no seed spread: no difference here can be told from seed noise."
        elif _exceeds_spread(margin, best, runner):
            text += (f" The margin exceeds the two methods' seed spread (std {fmt(best['top1_std'])} + "
                     f"{fmt(runner['top1_std'])})" + (f", but with {fewest} seeds that is weak evidence." if fewest < MIN_SEEDS else "."))
        else:
            text += (f" The margin is within the seed spread (std {fmt(best['top1_std'])} + {fmt(runner['top1_std'])}): "
                     "these two are not separated.")
        out.append(text)
    for ref in REFERENCES:
        if ref not in by_name or fewest < 2:
            continue
        rows = [c for c in summary["comparisons"] if c["reference"] == ref and c["method"] in by_name]
        beyond = [c for c in rows if _exceeds_spread(c["top1_diff_mean"], by_name[c["method"]], by_name[ref])]
        within = [c["method"] for c in rows if c not in beyond]
        if not rows:
            continue
        if beyond:
            listed = ", ".join(f"`{c['method']}` ({fmt(c['top1_diff_mean'], 2, signed=True)})" for c in beyond)
            text = f"Against `{ref}`, {listed} {'differ' if len(beyond) > 1 else 'differs'} by more than the seed spread"
            text += f"; {', '.join(f'`{m}`' for m in within)} {'do' if len(within) > 1 else 'does'} not." if within else "."
            if fewest < MIN_SEEDS:
                text += f" With {fewest} seeds per method that is a first indication, not evidence."
        else:
            text = f"Against `{ref}`, no method differs by more than the seed spread."
        out.append(text)
    tested = [c for c in summary["comparisons"] if c["top1_p"] is not None]
    if tested:
        if fewest < MIN_SEEDS:
            out.append(f"The paired t-tests rest on {fewest} seeds ({max(fewest - 1, 0)} degree(s) of freedom): "
                       "their p-values are shown but support no claim of significance.")
        else:
            low = [f"`{c['method']}` vs `{c['reference']}` (p {fmt_p(c['top1_p'])})" for c in tested if c["top1_p"] < 0.05]
            out.append("Paired t-tests with p < 0.05 (uncorrected for the "
                       f"{len(tested)} comparisons): {', '.join(low)}." if low else
                       f"No paired t-test reaches p < 0.05 over {fewest} seeds.")
    out += _diagnostics_conclusion(summary)
    teacher_top1 = summary["teacher"]["test"]["top1"]
    if "ce" in by_name and teacher_top1 <= by_name["ce"]["top1_mean"]:
        out.append(f"⚠ The teacher ({fmt(teacher_top1)}%) is no better than the CE student ({fmt(by_name['ce']['top1_mean'])}%): "
                   "whatever distillation changes here, it is not the transfer of a better model's knowledge.")
    if all(m["top1_mean"] >= CEILING for m in methods):
        out.append(f"⚠ Every method is at the ceiling (top-1 ≥ {CEILING:g}%): this data set is too easy to tell them apart.")
    return out


def _diagnostics_conclusion(summary: dict[str, Any]) -> list[str]:
    """What the gradient cosines and NC1 show, in words (head: shared vs separate heads)."""
    out = []
    conflict = summary.get("conflict") or []
    shared = [c for c in conflict if c["head"] is not None]
    separate = [c for c in conflict if c["head"] is None and c["backbone"] is not None]
    if shared:
        against = [c for c in shared if c["head"] < 0]
        listed = ", ".join(f"`{c['method']}` {c['pair']} ({fmt(c['head'], 3, signed=True)})" for c in (against or shared))
        out.append(("On a shared head, " + listed + " pull apart (negative mean cosine)") if against else
                   ("On a shared head no pair of terms pulls apart on average (" + listed + ")"))
        backbone = [c["backbone"] for c in shared if c["backbone"] is not None]
        if backbone:
            out[-1] += f"; in the backbone the same pairs range from {fmt(min(backbone), 3, signed=True)} to {fmt(max(backbone), 3, signed=True)}"
            lower = sum(c["backbone"] is not None and c["head"] < c["backbone"] for c in shared)
            out[-1] += f", and the head agrees less than the backbone for {lower} of {len(shared)} pair(s)."
        else:
            out[-1] += "."
    if separate:
        listed = ", ".join(f"`{c['method']}` {c['pair']} (backbone {fmt(c['backbone'], 3, signed=True)})" for c in separate)
        out.append(f"Terms on separate heads share no head weight (head cosine n/a): {listed}.")
    nc1 = [m for m in summary["methods"] if m.get("nc/nc1_mean") is not None]
    if len(nc1) > 1:
        low, high = min(nc1, key=lambda m: m["nc/nc1_mean"]), max(nc1, key=lambda m: m["nc/nc1_mean"])
        out.append(f"NC1 at the end of training is lowest for `{low['method']}` ({fmt(low['nc/nc1_mean'], 3)}) and highest "
                   f"for `{high['method']}` ({fmt(high['nc/nc1_mean'], 3)}): lower means more collapsed features.")
    return out


def build(summary: dict[str, Any], figures: dict[str, str], provenance: dict[str, str] | None = None) -> list[Block]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("img", path, alt).

    `provenance` (commit, date, front door, MLflow parent run): rows of the header of the
    per-run `report.html`; the artifact's `report.md` has none."""
    methods = summary["methods"]
    caveat = seed_caveat(methods)
    blocks: list[Block] = [
        ("h1", f"{summary['study']}: study report"),
        ("table", ["study set-up", ""], setup_rows(summary, provenance)),
        ("p", "Mean ± std over seeds; failed runs are listed in `summary.md` and kept out of the means. "
              "n/a: the quantity does not exist for that method (or that many seeds)."),
        ("h2", "Results"),
        ("p", "`top-1 last` is the final epoch's model, `top-1 best` the best epoch's test accuracy (as papers "
              "report). Δ is the difference of the means with the reference method's."),
    ]
    refs = [r for r in REFERENCES if any(m["method"] == r for m in methods)]
    header = ["method", "seeds", "top-1 last", "top-1 best", "best epoch", *[f"Δ last vs {r}" for r in refs], "top-5", "NLL"]
    rows = [
        [m["method"], str(m["seeds"]), pm(m, "top1"), pm(m, "best_top1"),
         NA if m["best_epoch_mean"] is None else f"{fmt(m['best_epoch_mean'], 1)}/{m['last_epoch']}",
         *[fmt(m.get(f"top1_vs_{r}"), 2, signed=True) for r in refs], pm(m, "top5"), pm(m, "nll", 3)]
        for m in methods
    ]
    blocks.append(("table", header, rows))
    if caveat:
        blocks.append(("p", caveat))
    if len(summary.get("teachers", [])) > 1:  # the extra and fine-tuned teachers beside `teacher`
        blocks += [
            ("h2", "Teachers"),
            ("p", "Every teacher of the study: trained from scratch, or fine-tuned from `teacher`. Test top-1 (%) "
                  "of the last epoch's model and of the best epoch; best epoch / epochs run."),
            teacher_table(summary["teachers"]),
        ]

    blocks.append(("h2", "Paired comparison over seeds"))
    blocks.append(("p", "Per seed, the method's top-1 minus the reference's (same seed: same init of the "
                        "backbone and same batch order). wins/ties/losses count the seeds; p is a two-sided "
                        "paired t-test (n/a with fewer than two seeds or identical differences)."))
    for ref in refs:
        rows = [
            [c["method"], str(c["n"]), fmt(c["top1_diff_mean"], 2, signed=True), c["top1_record"], _p(c, "top1"),
             fmt(c["best_top1_diff_mean"], 2, signed=True), c["best_top1_record"], _p(c, "best_top1")]
            for c in summary["comparisons"] if c["reference"] == ref
        ]
        if rows:
            blocks.append(("p", f"Against `{ref}`:"))
            blocks.append(("table", ["method", "paired seeds", "Δ last", "wins/ties/losses", "p (last)",
                                     "Δ best", "wins/ties/losses (best)", "p (best)"], rows))
    if not refs:
        blocks.append(("p", "Neither `kd` nor `ce` is in this study: no reference to compare against."))
    elif caveat and any(c["n"] < MIN_SEEDS for c in summary["comparisons"]):
        blocks.append(("p", caveat))

    blocks += [("h2", "Accuracy curves"), ("img", figures["accuracy"], "test top-1 per epoch, one line per method")]

    blocks.append(("h2", "Gradient conflict"))
    blocks.append(("p", "For each method with several loss terms: the cosine between the gradients of each pair "
                        "of terms on a fixed probe batch of training samples, every epoch, on the head "
                        "parameters and on the backbone separately. Negative means the terms pull the weights "
                        "in opposing directions; n/a on the head means the two terms reach separate heads (no "
                        "head weight gets a gradient from both), so there is nothing to conflict over. DHKD's claim: "
                        "on a shared head, CE and a logit-level KD loss conflict; in the backbone they do not. The "
                        "figure shows the DHKD ablation's methods (every method when none of them ran); the table "
                        "every method, mean over epochs and seeds."))
    if summary["conflict"]:
        blocks.append(("img", figures["conflict"], "gradient cosine per epoch, head and backbone"))
        blocks.append(("table", ["method", "terms", "head cos", "backbone cos"], [
            [c["method"], c["pair"], fmt(c["head"], 3), fmt(c["backbone"], 3)] for c in summary["conflict"]
        ]))
    else:
        blocks.append(("p", "No method of this study has more than one loss term."))

    blocks.append(("h2", "Neural collapse"))
    blocks.append(("p", "Penultimate features of the training set (no augmentation) and the linear heads at the "
                        "end of training. NC1 = tr(Σ_W Σ_B⁺)/C (within- vs between-class variability); NC2: "
                        "coefficient of variation of the norms (norm CV) and mean |cos + 1/(C-1)| over pairs (angle dev), "
                        "of the centred class means and of the head's rows (0 = a simplex ETF); NC3: distance of "
                        "the normalised head to the normalised class means (0 = self-dual). `aux head`: DHKD's second "
                        "head (n/a for a method without one)."))
    shown = [(k, label, d) for k, label, d in NC_COLUMNS if any(m.get(f"{k}_mean") is not None for m in methods)]
    if shown:
        blocks.append(("img", figures["collapse"], "neural-collapse metrics per method"))
        if "nc_curves" in figures:
            blocks.append(("img", figures["nc_curves"], "NC1 and NC3 per epoch"))
        blocks.append(("table", ["method", *[label for _, label, _ in shown]],
                       [[m["method"], *[pm(m, k, d) for k, _, d in shown]] for m in methods]))

    blocks.append(("h2", "Teacher fidelity and calibration"))
    blocks.append(("p", "On the test set: top-1 agreement with the teacher, KL(teacher ‖ student) at T = 1, "
                        "Spearman's rank correlation of the non-target logits with the teacher's (the dark "
                        "knowledge: does the student rank the wrong classes like the teacher?), and the ECE "
                        "(equal-width confidence bins)."))
    blocks.append(("table", ["method", "agreement", "KL to teacher", "non-target rank corr", "ECE"], [
        [m["method"], pm(m, "agreement"), pm(m, "kl_to_teacher", 3), pm(m, "nontarget_rank_corr", 3), pm(m, "ece")]
        for m in methods
    ]))
    blocks += [("h2", "Reliability diagrams"), ("img", figures["reliability"], "reliability diagram per method")]
    blocks.append(("h2", "Conclusion"))
    blocks += [("p", text) for text in conclusion(summary)]
    return blocks


def _p(comparison: dict[str, Any], metric: str) -> str:
    """A paired test's p, daggered when it rests on fewer than `MIN_SEEDS` pairs."""
    p = comparison[f"{metric}_p"]
    return fmt_p(p) + (WEAK if p is not None and comparison["n"] < MIN_SEEDS else "")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, *body in blocks:
        if kind == "h1":
            out.append(f"# {body[0]}")
        elif kind == "h2":
            out.append(f"## {body[0]}")
        elif kind == "p":
            out.append(body[0])
        elif kind == "img":
            out.append(f"![{body[1]}]({body[0]})")
        else:
            header, rows = body
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_html(blocks: list[Block], title: str, root: Path | None = None) -> str:
    """The blocks as one HTML page; with `root`, every image is read from `root / path` and
    embedded as a data URI (a self-contained page), else linked by its relative path."""
    out = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}td+td{white-space:nowrap}"
        "table.setup th,table.setup td{text-align:left;white-space:normal}</style>", "</head><body>",
    ]
    first_table = True
    for kind, *body in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline(body[0])}</{kind}>")
        elif kind == "img":
            src = data_uri(Path(root) / body[0]) if root is not None else html.escape(body[0])
            out.append(f'<p><img src="{src}" alt="{html.escape(body[1])}"></p>')
        else:
            header, rows = body
            css = ' class="setup"' if first_table else ""
            first_table = False
            out.append(f"<table{css}><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


FIGURE_NAMES = ("accuracy", "conflict", "collapse", "nc_curves", "reliability")


def write(
    summary: dict[str, Any], curves: pl.DataFrame, methods: list[str], out_dir: Path, conflict_methods: list[str] | None = None
) -> list[str]:
    """Draw the figures and write `report.md` into `out_dir`; returns the files written.

    `methods` is the study's order (it fixes the colours); `conflict_methods` the ones whose
    gradient-conflict curves are drawn (default: all; a zoo of methods would be unreadable).
    """
    out_dir = Path(out_dir)
    colours = method_colours(methods)
    figures = {name: f"{FIGURES}/{name}.png" for name in FIGURE_NAMES}
    drawers: dict[str, Callable[[Path], None]] = {
        "accuracy": lambda p: accuracy_figure(curves, colours, p),
        "reliability": lambda p: reliability_figure(summary["reliability"], summary["methods"], colours, p),
    }
    if summary["conflict"]:
        drawn = {m: colours[m] for m in (conflict_methods or methods)}
        drawers["conflict"] = lambda p: conflict_figure(curves, drawn, p)
    if any(m.get(f"{k}_mean") is not None for m in summary["methods"] for k, _, _ in NC_COLUMNS):
        drawers["collapse"] = lambda p: collapse_figure(summary["methods"], colours, p)
    if has_nc_curves(curves):
        drawers["nc_curves"] = lambda p: nc_curves_figure(curves, colours, p)
    for name, draw in drawers.items():
        draw(out_dir / figures[name])
    blocks = build(summary, {name: figures[name] for name in drawers})
    artifacts.write_text(out_dir / "report.md", to_markdown(blocks))
    return ["report.md", *(figures[name] for name in drawers)]


def write_html(summary: dict[str, Any], results_dir: Path, dest: Path, provenance: dict[str, str]) -> Path:
    """The per-run `report.html` at `dest`: the report of the results in `results_dir` (its
    `summary.json` and `figures/`), self-contained, with `provenance` in its header."""
    results_dir = Path(results_dir)
    figures = {name: f"{FIGURES}/{name}.png" for name in FIGURE_NAMES if (results_dir / FIGURES / f"{name}.png").is_file()}
    blocks = build(summary, figures, provenance)
    artifacts.write_text(dest, to_html(blocks, f"{summary['study']}: study report", root=results_dir))
    return Path(dest)
