"""The paired comparisons behind docs/results.md's DHKD ablation verdicts.

Reads the evaluations a study wrote (the flow's store, `<runtime.store>/evaluate/*/metrics.json`,
or DVC's `artifacts/evaluations/*/*/metrics.json`) and prints, for each pair the paper's
claims rest on, the mean per-seed difference of the last epoch's test top-1, the seeds won
and lost, and a two-sided paired t-test:

    .venv/bin/python docs/ablation_pairs.py .kdflow/store/evaluate [student arch]

A store shared by several studies holds all their evaluations: give the students' arch to
keep one study's (the two ablation studies train resnet8 and mlp students).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import scipy.stats

PAIRS = [
    ("ce+binarykl_norm", "binarykl_norm"), ("ce+binarykl_norm", "ce"), ("ce+binarykl", "binarykl"), ("ce+binarykl", "ce"),
    ("dhkd", "ce+binarykl_norm"), ("dhkd_linear", "ce+binarykl_norm"), ("dhkd", "binarykl_norm"),
    ("dhkd_linear", "binarykl_norm"), ("dhkd", "dhkd_linear"),
]
"""(method, reference): claim (i) is the first four, claim (iii) the rest."""


def student_arch(evaluation: Path) -> str | None:
    """The arch of the student an evaluation folder measured (flow store layout), if known."""
    manifest = evaluation / "manifest.json"
    student = json.loads(manifest.read_text()).get("meta", {}).get("student_dir") if manifest.is_file() else None
    if student is None or not (Path(student) / "manifest.json").is_file():
        return None
    return json.loads((Path(student) / "manifest.json").read_text())["meta"].get("arch")


def top1_by_seed(folder: Path, arch: str | None = None) -> dict[str, dict[int, float]]:
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for path in folder.rglob("metrics.json"):
        metrics = json.loads(path.read_text())
        if arch is not None and student_arch(path.parent) != arch:
            continue
        if "top1" in metrics:
            found[metrics["method"]][metrics["seed"]] = metrics["top1"]
    return found


def main() -> None:
    top1 = top1_by_seed(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
    print("| method | reference | seeds | mean Δ top-1 | wins/losses | p (paired t) |")
    print("|---|---|---|---|---|---|")
    for method, reference in PAIRS:
        seeds = sorted(set(top1.get(method, {})) & set(top1.get(reference, {})))
        if len(seeds) < 2:
            continue
        a, b = [top1[method][s] for s in seeds], [top1[reference][s] for s in seeds]
        diffs = [x - y for x, y in zip(a, b)]
        p = scipy.stats.ttest_rel(a, b).pvalue
        print(f"| {method} | {reference} | {len(seeds)} | {sum(diffs) / len(diffs):+.2f} | "
              f"{sum(d > 0 for d in diffs)}/{sum(d < 0 for d in diffs)} | {p:.2g} |")


if __name__ == "__main__":
    main()
