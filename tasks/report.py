"""The study report: `report.md`, `report.html` and the PNG figures they show.

Rendered by `aggregate` from the data it has just written (`summary.json` and the
per-method curves), so every number in the report is one of `summary.json`'s. The
document is built once as a list of blocks and written twice (Markdown and HTML), so the
two versions cannot drift apart. The figures are drawn by `tasks.report_figures`. A token
study (its data set's `kind`) is ranked and compared on validation perplexity instead of
top-1 (`PRIMARY`), and its report speaks of tokens, perplexity and token accuracy.

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
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

import polars as pl

from kdlib import artifacts
from tasks import time_ledger
from tasks.report_figures import (
    NC_COLUMNS, accuracy_figure, collapse_figure, conflict_columns, conflict_figure, has_nc_curves, method_colours,
    nc_curves_figure, perplexity_figure, reliability_figure,
)

FIGURES = "figures"
REFERENCES = ("kd", "ce")
DHKD_ABLATION = ("kd", "dkd", "binarykl", "binarykl_norm", "ce+binarykl", "ce+binarykl_norm", "dhkd", "dhkd_kd")
"""Registry methods whose gradient-conflict curves are drawn (every multi-term method is in the table)."""
Block = tuple[Any, ...]
NA = "n/a"
MIN_SEEDS = 3
"""Below this many seeds a mean ± std or a paired test is marked as resting on too few seeds."""
WEAK = "†"
CEILING = 99.0
"""Top-1 (%) at or above which every arm counts as at the ceiling: the data cannot separate the methods."""


class Primary(NamedTuple):
    """What a study's methods are ranked and compared on: one code path for image and token
    studies (the table's order, the Δ columns, the paired tests, the conclusion)."""

    metric: str
    """Summary column (without `_mean`) the table is sorted by and the conclusion reads."""
    higher_is_better: bool
    name: str
    """The metric in prose: "the highest <name>"."""
    short: str
    """After a value in prose: "at 70.00% <short>"."""
    unit: str
    quote: str
    """Before a bare value in prose: "the teacher (<quote>70.50<unit>)"."""
    points: str
    """After a margin: "2.00<points> above"."""
    paired: tuple[tuple[str, str], ...]
    """(metric, short label) compared per seed against each reference: the paired table's column pairs."""
    lead: tuple[tuple[str, str, int], ...]
    """(label, metric, digits) of the columns before the accuracy ones in the results tables."""
    accuracy: str
    """How top-1 is named in table headers."""
    ceiling: float | None
    """Primary value at or beyond which every arm is at the ceiling (None: no ceiling)."""


PRIMARY = {
    "images": Primary("top1", True, "last-epoch top-1", "top-1", "%", "", " points", (("top1", "last"), ("best_top1", "best")), (),
                      "top-1", CEILING),
    "tokens": Primary("val_ppl", False, "validation perplexity", "validation perplexity", "", "validation perplexity ", "",
                      (("val_ppl", "val. ppl"), ("ppl", "test ppl")),
                      (("val. perplexity", "val_ppl", 2), ("test perplexity", "ppl", 2)), "token acc.", None),
}
"""By data kind (`kind_of`): token studies are ranked by validation perplexity, lower first."""


def kind_of(summary: dict[str, Any]) -> str:
    """`tokens` for a token study (its data set's `kind`), else `images`."""
    return "tokens" if ((summary.get("setup") or {}).get("data") or {}).get("kind") == "tokens" else "images"


def better(primary: Primary, a: float, b: float) -> bool:
    """`a` is strictly better than `b` on the primary metric."""
    return a > b if primary.higher_is_better else a < b


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
# the document
# --------------------------------------------------------------------------- #
def data_size(data: dict[str, Any]) -> str:
    """The data set's size from `setup.data` (the prepare_data manifest's numbers): images and
    classes, or for tokens the windows and tokens per split, the context and the vocabulary."""
    if data.get("kind") == "tokens":
        tokens = data["tokens"]
        return (f"{data['num_train']} train / {data['num_val']} validation / {data['num_test']} test windows of "
                f"{data['context']} tokens ({tokens['train']} / {tokens['val']} / {tokens['test']} tokens), "
                f"vocabulary {data['num_classes']}")
    return (f"{data['num_train']} train / {data['num_test']} test images, {data['num_classes']} classes, "
            f"{'×'.join(map(str, data['shape']))}")


def setup_rows(summary: dict[str, Any], provenance: dict[str, str] | None = None) -> list[list[str]]:
    """The header's rows: what the study ran on (from `summary.json`'s `setup`) and, for the
    per-run `report.html`, where it comes from (commit, date, MLflow parent run)."""
    setup, teacher = summary.get("setup", {}), summary["teacher"]
    data = setup.get("data") or {}
    if "num_train" in data:
        corpus = f", corpus {data['corpus']}" if data.get("corpus") else ""
        dataset = f"`{data['source']}` ({data['name']}{corpus}): {data_size(data)}"
    else:
        dataset = f"`{data['source']}`" if data.get("source") else NA
    students = setup.get("students") or {}
    made = how_made(summary["teachers"][0]) if summary.get("teachers") else "trained"
    test = teacher["test"]
    if kind_of(summary) == "tokens":
        scores = (f"validation perplexity {fmt(test.get('val_ppl'))}, test perplexity {fmt(test.get('ppl'))}, "
                  f"token accuracy {fmt(test['top1'])}%")
    else:
        scores = f"test top-1 {fmt(test['top1'])}%"
    rows = [
        ["study", f"`{summary['study']}`"],
        ["data set", dataset],
        ["teacher", f"`{teacher['arch']}` ({made}), {scores}"],
    ]
    cache = setup.get("cache")
    if cache:  # a token study's sparse teacher cache against the dense one it replaces
        rows.append(["logit cache", f"top-{cache['topk']} teacher logits and the log-normaliser per token: "
                                    f"{cache['bytes_per_token']:g} bytes per token, vs {cache['dense_bytes_per_token']:g} "
                                    f"for a dense fp16 cache of the same tokens "
                                    f"({cache['dense_bytes_per_token'] / cache['bytes_per_token']:.0f}× smaller)"])
    if students:
        sched = students["schedule"]
        optimizer = sched.get("optimizer", "sgd")
        step = f"momentum {sched['momentum']:g}" if optimizer == "sgd" else optimizer
        rows += [
            ["students", f"`{students['arch']}`, seeds {', '.join(map(str, students['seeds']))}"],
            ["schedule", f"{sched['epochs']} epochs, batch {sched['batch_size']}, lr {sched['lr']:g} "
                         f"({sched['scheduler']}, {sched['warmup_epochs']} warmup), {step}, "
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


def _exceeds_spread(diff: float | None, a: dict[str, Any], b: dict[str, Any], metric: str = "top1") -> bool:
    """The difference of two methods' mean `metric` is larger than their seed spreads together (std + std)."""
    if diff is None or a["seeds"] < 2 or b["seeds"] < 2:
        return False
    return abs(diff) > (a[f"{metric}_std"] or 0.0) + (b[f"{metric}_std"] or 0.0)


def conclusion(summary: dict[str, Any]) -> list[str]:
    """A short written conclusion from the numbers of `summary.json`, never stronger than they are:
    the best method on the primary metric (`PRIMARY`: last-epoch top-1, or for a token study
    validation perplexity) and its margin, which differences exceed the seed spread (std +
    std), what the paired tests can say, the DHKD diagnostics, and warnings when the teacher
    is no better than the CE student or every arm is at the ceiling."""
    p = PRIMARY[kind_of(summary)]
    metric, mean, std = p.metric, f"{p.metric}_mean", f"{p.metric}_std"
    methods = [m for m in summary["methods"] if m.get(mean) is not None]
    if not methods:
        return ["Every student failed: there is nothing to compare."]
    out: list[str] = []
    by_name = {m["method"]: m for m in methods}
    best = methods[0]  # summary rows are sorted by the primary metric, best first
    fewest = min(m["seeds"] for m in methods)
    if len(methods) == 1:
        out.append(f"Only `{best['method']}` finished, at {fmt(best[mean])}{p.unit} {p.short}: no comparison is possible.")
    else:
        runner = methods[1]
        margin = (best[mean] - runner[mean]) * (1 if p.higher_is_better else -1)
        text = (f"`{best['method']}` has the {'highest' if p.higher_is_better else 'lowest'} {p.name}, "
                f"{fmt(best[mean])}{p.unit}, {fmt(margin)}{p.points} {'above' if p.higher_is_better else 'below'} "
                f"`{runner['method']}` ({fmt(runner[mean])}{p.unit}).")
        if fewest < 2:
            text += " With one seed there is no seed spread: no difference here can be told from seed noise."
        elif _exceeds_spread(margin, best, runner, metric):
            text += (f" The margin exceeds the two methods' seed spread (std {fmt(best[std])} + "
                     f"{fmt(runner[std])})" + (f", but with {fewest} seeds that is weak evidence." if fewest < MIN_SEEDS else "."))
        else:
            text += (f" The margin is within the seed spread (std {fmt(best[std])} + {fmt(runner[std])}): "
                     "these two are not separated.")
        out.append(text)
    ce = by_name.get("ce")
    if kind_of(summary) == "tokens" and ce is not None and best is not ce:  # the question: KD vs CE on perplexity
        gain = ce[mean] - best[mean]  # the best comes first: never negative
        text = f"Against `ce` ({fmt(ce[mean])}), `{best['method']}`'s {p.name} is {fmt(gain)} lower"
        if fewest < 2:
            text += "; with one seed that cannot be told from seed noise."
        else:
            beyond = _exceeds_spread(gain, best, ce, metric)
            text += (f", {'more than' if beyond else 'within'} the seed spread (std {fmt(best[std])} + {fmt(ce[std])}).")
        out.append(text)
    direction = "" if p.higher_is_better else f" (Δ {p.name}: negative is better)"
    for ref in REFERENCES:
        if ref not in by_name or fewest < 2:
            continue
        rows = [c for c in summary["comparisons"] if c["reference"] == ref and c["method"] in by_name]
        beyond = [c for c in rows if _exceeds_spread(c[f"{metric}_diff_mean"], by_name[c["method"]], by_name[ref], metric)]
        within = [c["method"] for c in rows if c not in beyond]
        if not rows:
            continue
        if beyond:
            listed = ", ".join(f"`{c['method']}` ({fmt(c[f'{metric}_diff_mean'], 2, signed=True)})" for c in beyond)
            text = (f"Against `{ref}`{direction}, {listed} {'differ' if len(beyond) > 1 else 'differs'} "
                    "by more than the seed spread")
            text += f"; {', '.join(f'`{m}`' for m in within)} {'do' if len(within) > 1 else 'does'} not." if within else "."
            if fewest < MIN_SEEDS:
                text += f" With {fewest} seeds per method that is a first indication, not evidence."
        else:
            text = f"Against `{ref}`, no method differs by more than the seed spread."
        out.append(text)
    tested = [c for c in summary["comparisons"] if c.get(f"{metric}_p") is not None]
    if tested:
        if fewest < MIN_SEEDS:
            out.append(f"The paired t-tests rest on {fewest} seeds ({max(fewest - 1, 0)} degree(s) of freedom): "
                       "their p-values are shown but support no claim of significance.")
        else:
            low = [f"`{c['method']}` vs `{c['reference']}` (p {fmt_p(c[f'{metric}_p'])})" for c in tested
                   if c[f"{metric}_p"] < 0.05]
            out.append("Paired t-tests with p < 0.05 (uncorrected for the "
                       f"{len(tested)} comparisons): {', '.join(low)}." if low else
                       f"No paired t-test reaches p < 0.05 over {fewest} seeds.")
    out += _diagnostics_conclusion(summary)
    teacher = summary["teacher"]["test"].get(metric)
    if "ce" in by_name and teacher is not None and not better(p, teacher, by_name["ce"][mean]):
        out.append(f"⚠ The teacher ({p.quote}{fmt(teacher)}{p.unit}) is no better than the CE student "
                   f"({fmt(by_name['ce'][mean])}{p.unit}): "
                   "whatever distillation changes here, it is not the transfer of a better model's knowledge.")
    if p.ceiling is not None and all(m[mean] >= p.ceiling for m in methods):
        out.append(f"⚠ Every method is at the ceiling (top-1 ≥ {p.ceiling:g}%): this data set is too easy to tell them apart.")
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


def score_columns(p: Primary) -> list[tuple[str, str, int]]:
    """(header, metric, digits) of a results table's leading score columns: for a token study the
    perplexities, then the last and best epoch's top-1 (token accuracy for tokens)."""
    return [*p.lead, (f"{p.accuracy} last", "top1", 2), (f"{p.accuracy} best", "best_top1", 2)]


def build(
    summary: dict[str, Any], figures: dict[str, str], provenance: dict[str, str] | None = None,
    time_spent: tuple[str, dict[str, Any]] | None = None,
) -> list[Block]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("img", path, alt).

    `provenance` (commit, date, front door, MLflow parent run): rows of the header of the
    per-run `report.html`; `time_spent` (the front door's name and `tasks.time_ledger.summary`
    of this run): its "where the time went" section. The artifact's `report.md` has neither."""
    methods = summary["methods"]
    tokens = kind_of(summary) == "tokens"
    p = PRIMARY[kind_of(summary)]
    caveat = seed_caveat(methods)
    blocks: list[Block] = [
        ("h1", f"{summary['study']}: study report"),
        ("table", ["study set-up", ""], setup_rows(summary, provenance)),
        ("p", "Mean ± std over seeds; failed runs are listed in `summary.md` and kept out of the means. "
              "n/a: the quantity does not exist for that method (or that many seeds)."),
        ("h2", "Results"),
        ("p", "`val. perplexity` and `test perplexity`: exp of the mean per-token NLL on the validation and the test "
              "windows (lower is better; the table is sorted by validation perplexity). `token acc. last` is the "
              "final epoch's model's top-1 over the test tokens, `token acc. best` the best epoch's. Δ is the "
              "difference of the mean validation perplexities with the reference method's (negative: better)."
         if tokens else
         "`top-1 last` is the final epoch's model, `top-1 best` the best epoch's test accuracy (as papers "
         "report). Δ is the difference of the means with the reference method's."),
    ]
    refs = [r for r in REFERENCES if any(m["method"] == r for m in methods)]
    scores = score_columns(p)
    delta = p.paired[0][1]
    header = ["method", "seeds", *[h for h, _, _ in scores], "best epoch", *[f"Δ {delta} vs {r}" for r in refs], "top-5", "NLL"]
    rows = [
        [m["method"], str(m["seeds"]), *[pm(m, k, d) for _, k, d in scores],
         NA if m["best_epoch_mean"] is None else f"{fmt(m['best_epoch_mean'], 1)}/{m['last_epoch']}",
         *[fmt(m.get(f"{p.metric}_vs_{r}"), 2, signed=True) for r in refs], pm(m, "top5"), pm(m, "nll", 3)]
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
    blocks.append(("p", ("Per seed, the method's validation and test perplexity minus the reference's (same seed: "
                         "same init and same batch order); a win is a lower perplexity. "
                         if tokens else
                         "Per seed, the method's top-1 minus the reference's (same seed: same init of the "
                         "backbone and same batch order). ") +
                        "wins/ties/losses count the seeds; p is a two-sided "
                        "paired t-test (n/a with fewer than two seeds or identical differences)."))
    paired_header = ["method", "paired seeds"]
    for i, (_, short) in enumerate(p.paired):
        paired_header += [f"Δ {short}", "wins/ties/losses" + (f" ({short})" if i else ""), f"p ({short})"]
    for ref in refs:
        rows = [
            [c["method"], str(c["n"]), *[cell for metric, _ in p.paired for cell in (
                fmt(c[f"{metric}_diff_mean"], 2, signed=True), c[f"{metric}_record"], _p(c, metric))]]
            for c in summary["comparisons"] if c["reference"] == ref
        ]
        if rows:
            blocks.append(("p", f"Against `{ref}`:"))
            blocks.append(("table", paired_header, rows))
    if not refs:
        blocks.append(("p", "Neither `kd` nor `ce` is in this study: no reference to compare against."))
    elif caveat and any(c["n"] < MIN_SEEDS for c in summary["comparisons"]):
        blocks.append(("p", caveat))

    if tokens:
        if "perplexity" in figures:
            blocks += [("h2", "Validation perplexity"),
                       ("img", figures["perplexity"], "validation perplexity per method, test perplexity and the teacher's")]
        blocks += [("h2", "Per-epoch curves"),
                   ("img", figures["accuracy"], "test token accuracy and per-token NLL per epoch, one line per method")]
    else:
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
    shown = [(k, label, d) for k, label, d in NC_COLUMNS if any(m.get(f"{k}_mean") is not None for m in methods)]
    if tokens and not shown:
        blocks.append(("p", "Not measured in a token study: its classes are the vocabulary's tokens, most of which "
                            "have too few positions for class means."))
    else:
        blocks.append(("p", "Penultimate features of the training set (no augmentation) and the linear heads at the "
                            "end of training. NC1 = tr(Σ_W Σ_B⁺)/C (within- vs between-class variability); NC2: "
                            "coefficient of variation of the norms (norm CV) and mean |cos + 1/(C-1)| over pairs (angle dev), "
                            "of the centred class means and of the head's rows (0 = a simplex ETF); NC3: distance of "
                            "the normalised head to the normalised class means (0 = self-dual). `aux head`: DHKD's second "
                            "head (n/a for a method without one)."))
    if shown:
        blocks.append(("img", figures["collapse"], "neural-collapse metrics per method"))
        if "nc_curves" in figures:
            blocks.append(("img", figures["nc_curves"], "NC1 and NC3 per epoch"))
        blocks.append(("table", ["method", *[label for _, label, _ in shown]],
                       [[m["method"], *[pm(m, k, d) for k, _, d in shown]] for m in methods]))

    blocks.append(("h2", "Teacher fidelity and calibration"))
    if tokens:
        blocks.append(("p", "On the test windows, per token: top-1 agreement with the teacher, KL(teacher ‖ student) "
                            "at T = 1 with the teacher restricted to its top-K logits (the distribution its cache "
                            "holds), and the ECE (equal-width confidence bins)."))
        blocks.append(("table", ["method", "agreement", "KL to teacher (top-K)", "ECE"], [
            [m["method"], pm(m, "agreement"), pm(m, "kl_to_teacher", 3), pm(m, "ece")] for m in methods
        ]))
    else:
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
    if time_spent is not None:
        front_door, account = time_spent
        header, rows = time_ledger.table(account)
        blocks += [
            ("h2", "Where the time went"),
            ("p", "Wall time of the steps this pipeline run computed, in seconds summed over each step's runs: "
                  "startup (process start and imports), data (reading the data set and caches), compute "
                  "(training steps; a logit cache's teacher passes), diagnostics (per-epoch probes), evaluation "
                  "(test-set predictions and metrics), writing (artifacts, checkpoints, the report), tracking "
                  "(MLflow), other (building models, hashing keys, the rest). Steps reused from a cache are "
                  "not counted (a DVC stage that did not run, a Prefect task that was Cached)."),
            ("table", header, rows),
            ("p", time_ledger.totals(front_door, account)),
        ]
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


FIGURE_NAMES = ("perplexity", "accuracy", "conflict", "collapse", "nc_curves", "reliability")


def write(
    summary: dict[str, Any], curves: pl.DataFrame, methods: list[str], out_dir: Path, conflict_methods: list[str] | None = None
) -> list[str]:
    """Draw the figures and write `report.md` into `out_dir`; returns the files written.

    `methods` is the study's order (it fixes the colours); `conflict_methods` the ones whose
    gradient-conflict curves are drawn (default: all; a zoo of methods would be unreadable).
    """
    out_dir = Path(out_dir)
    kind = kind_of(summary)
    colours = method_colours(methods)
    figures = {name: f"{FIGURES}/{name}.png" for name in FIGURE_NAMES}
    drawers: dict[str, Callable[[Path], None]] = {}
    if kind == "tokens" and any(m.get("val_ppl_mean") is not None for m in summary["methods"]):
        teacher_ppl = summary["teacher"]["test"].get("val_ppl")
        drawers["perplexity"] = lambda p: perplexity_figure(summary["methods"], teacher_ppl, colours, p)
    drawers["accuracy"] = lambda p: accuracy_figure(curves, colours, p, kind)
    drawers["reliability"] = lambda p: reliability_figure(summary["reliability"], summary["methods"], colours, p, kind)
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


def write_html(
    summary: dict[str, Any], results_dir: Path, dest: Path, provenance: dict[str, str],
    time_spent: tuple[str, dict[str, Any]] | None = None,
) -> Path:
    """The per-run `report.html` at `dest`: the report of the results in `results_dir` (its
    `summary.json` and `figures/`), self-contained, with `provenance` in its header and this
    run's `time_spent` (see `build`) at its end."""
    results_dir = Path(results_dir)
    figures = {name: f"{FIGURES}/{name}.png" for name in FIGURE_NAMES if (results_dir / FIGURES / f"{name}.png").is_file()}
    blocks = build(summary, figures, provenance, time_spent)
    artifacts.write_text(dest, to_html(blocks, f"{summary['study']}: study report", root=results_dir))
    return Path(dest)
