"""The results table: means and sample stds over seeds, sorted by top-1."""
import math

import polars as pl

from tasks.aggregate import summarize


def run(method, seed, top1):
    return {"failed": None, "method": method, "seed": seed, "top1": top1, "best_top1": top1 + 1, "top5": 90.0, "nll": 1.0,
            "ece": 5.0, "agreement": 70.0, "kl_to_teacher": 0.5, "best_epoch": 3, "last_epoch": 4}


def test_mean_std_and_order():
    runs = pl.DataFrame(schema_overrides={"failed": pl.String}, data=[run("ce", 0, 50.0), run("ce", 1, 54.0), run("kd", 0, 60.0), run("kd", 1, 60.0), run("dkd", 0, 55.0)])
    table = summarize(runs, ["ce", "kd", "dkd"])
    assert table["method"].to_list() == ["kd", "dkd", "ce"]
    ce = table.filter(pl.col("method") == "ce").row(0, named=True)
    assert ce["top1_mean"] == 52.0 and math.isclose(ce["top1_std"], math.sqrt(8.0))
    assert ce["best_top1_mean"] == 53.0 and ce["seeds"] == 2 and ce["last_epoch"] == 4
    dkd = table.filter(pl.col("method") == "dkd").row(0, named=True)
    assert dkd["top1_std"] is None and dkd["seeds"] == 1  # one seed has no spread: null (n/a), not 0


def test_ties_keep_the_study_order():
    runs = pl.DataFrame(schema_overrides={"failed": pl.String}, data=[run("b", 0, 50.0), run("a", 0, 50.0)])
    assert summarize(runs, ["b", "a"])["method"].to_list() == ["b", "a"]


def test_paired_comparison_hand_cases():
    from tasks.aggregate import paired

    mean, record, p = paired([2.0, -1.0, 2.0])
    assert mean == 1.0 and record == "2/0/1"
    # sd = sqrt(3), t = 1 / (sqrt(3) / sqrt(3)) = 1; with 2 degrees of freedom the two-sided p is 1 - t / sqrt(2 + t^2)
    assert math.isclose(p, 1 - 1 / math.sqrt(3), rel_tol=1e-9)
    assert paired([1.1111111111111112, 1.1111111111111105])[1:] == ("2/0/0", None)  # differ by rounding only
    assert paired([0.5])[2] is None and paired([]) == (None, "0/0/0", None)
