"""The study report: `report.md`, `report.html` and the PNG figures they show.

Rendered by `aggregate` from the data it has just written (`summary.json` and the
per-method curves), so every number in the report is one of `summary.json`'s. The
document is built once as a list of blocks and written twice (Markdown and HTML), so the
two versions cannot drift apart. Figures use matplotlib's Agg backend; a method keeps one
colour in every figure (its place in `students.methods`).
"""
from __future__ import annotations

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
DHKD_ABLATION = ("kd", "dkd", "binarykl", "binarykl_norm", "ce+binarykl_norm", "dhkd", "dhkd_kd")
"""Registry methods whose gradient-conflict curves are drawn (every multi-term method is in the table)."""
NC_COLUMNS = (
    ("nc/nc1", "NC1", 3), ("nc/means_norm_cv", "NC2 means: norm CV", 3), ("nc/means_cos_dev", "NC2 means: angle dev", 3),
    ("nc/classifier_norm_cv", "NC2 head: norm CV", 3), ("nc/classifier_cos_dev", "NC2 head: angle dev", 3),
    ("nc/classifier_nc3", "NC3 head", 3), ("nc/classifier_norm", "head norm", 2), ("nc/aux_head_nc3", "NC3 aux head", 3),
)
Block = tuple[Any, ...]


# --------------------------------------------------------------------------- #
# formatting: one function per number kind, used by both the report and its test
# --------------------------------------------------------------------------- #
def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "—"
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
    return "—" if p is None else f"{p:.2g}"


def pm(row: dict[str, Any], metric: str, digits: int = 2) -> str:
    """`mean ± std` of a summary row's metric, or a dash when the method has none."""
    mean = row.get(f"{metric}_mean")
    return "—" if mean is None else f"{fmt(mean, digits)} ± {fmt(row[f'{metric}_std'], digits)}"


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
        ax.bar(range(len(shown)), [r[f"{key}_mean"] for r in shown], yerr=[r[f"{key}_std"] for r in shown],
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
def build(summary: dict[str, Any], figures: dict[str, str]) -> list[Block]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("img", path, alt)."""
    methods, teacher = summary["methods"], summary["teacher"]
    blocks: list[Block] = [
        ("h1", f"{summary['study']}: study report"),
        ("p", f"Teacher `{teacher['arch']}`, test top-1 {fmt(teacher['test']['top1'])}%. "
              "Mean ± std over seeds; failed runs are listed in `summary.md` and kept out of the means."),
        ("h2", "Results"),
        ("p", "`top-1 last` is the final epoch's model, `top-1 best` the best epoch's test accuracy (as papers "
              "report). Δ is the difference of the means with the reference method's."),
    ]
    refs = [r for r in REFERENCES if any(m["method"] == r for m in methods)]
    header = ["method", "seeds", "top-1 last", "top-1 best", "best epoch", *[f"Δ last vs {r}" for r in refs], "top-5", "NLL"]
    rows = [
        [m["method"], str(m["seeds"]), pm(m, "top1"), pm(m, "best_top1"),
         "—" if m["best_epoch_mean"] is None else f"{fmt(m['best_epoch_mean'], 1)}/{m['last_epoch']}",
         *[fmt(m.get(f"top1_vs_{r}"), 2, signed=True) for r in refs], pm(m, "top5"), pm(m, "nll", 3)]
        for m in methods
    ]
    blocks.append(("table", header, rows))
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
                        "paired t-test (— with fewer than two seeds or identical differences)."))
    for ref in refs:
        rows = [
            [c["method"], str(c["n"]), fmt(c["top1_diff_mean"], 2, signed=True), c["top1_record"], fmt_p(c["top1_p"]),
             fmt(c["best_top1_diff_mean"], 2, signed=True), c["best_top1_record"], fmt_p(c["best_top1_p"])]
            for c in summary["comparisons"] if c["reference"] == ref
        ]
        if rows:
            blocks.append(("p", f"Against `{ref}`:"))
            blocks.append(("table", ["method", "paired seeds", "Δ last", "wins/ties/losses", "p (last)",
                                     "Δ best", "wins/ties/losses (best)", "p (best)"], rows))
    if not refs:
        blocks.append(("p", "Neither `kd` nor `ce` is in this study: no reference to compare against."))

    blocks += [("h2", "Accuracy curves"), ("img", figures["accuracy"], "test top-1 per epoch, one line per method")]

    blocks.append(("h2", "Gradient conflict"))
    blocks.append(("p", "For each method with several loss terms: the cosine between the gradients of each pair "
                        "of terms on a fixed probe batch of training samples, every epoch, on the head "
                        "parameters and on the backbone separately. Negative means the terms pull the weights "
                        "in opposing directions. DHKD's claim: on a shared head, CE and a logit-level KD "
                        "loss conflict; in the backbone they do not. The figure shows the DHKD ablation's methods "
                        "(every method when none of them ran); the table every method, mean over epochs and seeds."))
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
                        "the normalised head to the normalised class means (0 = self-dual). `aux head`: DHKD's second head."))
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
    return blocks


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


def to_html(blocks: list[Block], title: str) -> str:
    out = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>", "</head><body>",
    ]
    for kind, *body in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline(body[0])}</{kind}>")
        elif kind == "img":
            out.append(f'<p><img src="{html.escape(body[0])}" alt="{html.escape(body[1])}"></p>')
        else:
            header, rows = body
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write(
    summary: dict[str, Any], curves: pl.DataFrame, methods: list[str], out_dir: Path, conflict_methods: list[str] | None = None
) -> list[str]:
    """Draw the figures and write `report.md` and `report.html` into `out_dir`; returns the files written.

    `methods` is the study's order (it fixes the colours); `conflict_methods` the ones whose
    gradient-conflict curves are drawn (default: all; a zoo of methods would be unreadable).
    """
    out_dir = Path(out_dir)
    colours = method_colours(methods)
    figures = {name: f"{FIGURES}/{name}.png" for name in ("accuracy", "conflict", "collapse", "nc_curves", "reliability")}
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
    artifacts.write_text(out_dir / "report.html", to_html(blocks, f"{summary['study']}: study report"))
    return ["report.md", "report.html", *(figures[name] for name in drawers)]
