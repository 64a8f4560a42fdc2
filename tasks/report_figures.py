"""The study report's figures (PNG, matplotlib's Agg backend), drawn by `tasks.report.write`.

A method keeps one colour in every figure (its place in `students.methods`, `method_colours`).
Image and token studies share every figure but the perplexity bars (token studies only); the
per-epoch curves plot what the study's history records (`curve_panels`), and the NC figures
are drawn only for a study that measured NC (token studies do not).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
import polars as pl  # noqa: E402

from kdlib import artifacts  # noqa: E402

NC_COLUMNS = (
    ("nc/nc1", "NC1", 3), ("nc/means_norm_cv", "NC2 means: norm CV", 3), ("nc/means_cos_dev", "NC2 means: angle dev", 3),
    ("nc/classifier_norm_cv", "NC2 head: norm CV", 3), ("nc/classifier_cos_dev", "NC2 head: angle dev", 3),
    ("nc/classifier_nc3", "NC3 head", 3), ("nc/classifier_norm", "head norm", 2), ("nc/aux_head_nc3", "NC3 aux head", 3),
)
"""The end-of-training NC metrics: summary column (without `_mean`), label, digits."""
CURVE_PANELS = {
    "images": (("test_top1", "test top-1 (%), mean over seeds", "Test accuracy per epoch"),),
    "tokens": (("test_top1", "test token accuracy (%), mean over seeds", "Token accuracy per epoch"),
               ("test_nll", "test per-token NLL (nats), mean over seeds", "Per-token NLL per epoch")),
}
"""Per data kind, the per-epoch curves drawn (history key, y label, title), one panel each."""


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


def accuracy_figure(curves: pl.DataFrame, colours: dict[str, Any], path: Path, kind: str = "images") -> None:
    """Per-epoch test curves, one panel per entry of `CURVE_PANELS[kind]`, one line per method."""
    panels = CURVE_PANELS[kind]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 + 4.5 * (len(panels) - 1), 4.2), squeeze=False)
    for ax, (column, ylabel, title) in zip(axes[0], panels):
        for method, colour in colours.items():
            c = curves.filter(pl.col("method") == method)
            if c.height and column in c.columns:
                ax.plot(c["epoch"], c[column], marker="o", markersize=3, color=colour, label=method)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if len(panels) > 1:
        fig.tight_layout()
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    save_figure(fig, path)


def perplexity_figure(methods: list[dict[str, Any]], teacher_val_ppl: float | None, colours: dict[str, Any], path: Path) -> None:
    """A token study's validation perplexity per method (a dot at the mean over seeds, the std
    as error bars, in the table's order: best at the top), its test perplexity as a hollow
    marker, the teacher's validation perplexity as a line. A log axis when the values span
    more than a factor 3 (a dot plot, so no bar length depends on where the axis starts)."""
    shown = [r for r in methods if r.get("val_ppl_mean") is not None]
    fig, ax = plt.subplots(figsize=(7, 1.1 + 0.4 * max(len(shown), 1)))
    ys = list(range(len(shown)))[::-1]
    for y, r in zip(ys, shown):
        colour = colours[r["method"]]
        ax.errorbar(r["val_ppl_mean"], y, xerr=r.get("val_ppl_std") or 0.0, fmt="o", color=colour, capsize=3, markersize=6)
        if r.get("ppl_mean") is not None:
            ax.plot(r["ppl_mean"], y, "D", markersize=5, markerfacecolor="none", markeredgecolor=colour)
        ax.annotate(f"{r['val_ppl_mean']:.1f}", (r["val_ppl_mean"] + (r.get("val_ppl_std") or 0.0), y), xytext=(5, 0),
                    textcoords="offset points", va="center", fontsize=8)
    handles = [plt.Line2D([], [], marker="o", color="grey", linestyle="none", label="validation (mean ± std over seeds)"),
               plt.Line2D([], [], marker="D", color="grey", markerfacecolor="none", linestyle="none", label="test (mean)")]
    values = [r["val_ppl_mean"] for r in shown] + [r["ppl_mean"] for r in shown if r.get("ppl_mean") is not None]
    if teacher_val_ppl is not None:
        handles.append(ax.axvline(teacher_val_ppl, color="black", linestyle="--", linewidth=1.0,
                                  label=f"teacher, validation ({teacher_val_ppl:.1f})"))
        values.append(teacher_val_ppl)
    if values and max(values) > 3 * min(values):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
        ax.set_xlim(min(values) / 1.25, max(values) * 1.5)
    ax.set_yticks(ys, [r["method"] for r in shown])
    ax.set_ylim(-0.7, len(shown) - 0.3)
    ax.set(xlabel="perplexity (lower is better)", title="Validation perplexity per method")
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
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


def reliability_figure(
    reliability: dict[str, dict[str, list[float]]], methods: list[dict[str, Any]], colours: dict[str, Any], path: Path,
    kind: str = "images",
) -> None:
    """Accuracy against mean confidence per bin, pooled over seeds (per test token for a token
    study); the diagonal is perfect calibration."""
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
        value = ece.get(method)
        ax.set(title=f"{method} (ECE {'n/a' if value is None else f'{value:.2f}'}%)", xlim=(0, 1), ylim=(0, 1))
    for ax in axes[-1]:
        ax.set_xlabel("confidence")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes[0, 0].legend(loc="upper left", fontsize=7, frameon=False)
    fig.suptitle(f"Reliability diagrams (test {'tokens' if kind == 'tokens' else 'set'}, pooled over seeds)")
    fig.tight_layout()
    save_figure(fig, path)


