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


def token_run(method, seed, val_ppl, top1):
    return run(method, seed, top1) | {"val_ppl": val_ppl, "ppl": val_ppl - 10.0, "val_nll": math.log(val_ppl)}


def test_a_token_study_is_sorted_and_compared_on_validation_perplexity_lower_first():
    from tasks.aggregate import comparisons
    from tasks.report import PRIMARY

    tokens = PRIMARY["tokens"]
    runs = pl.DataFrame(schema_overrides={"failed": pl.String}, data=[
        token_run("ce", 0, 180.0, 17.0), token_run("ce", 1, 182.0, 17.2), token_run("kd", 0, 170.0, 18.0),
        token_run("kd", 1, 171.0, 18.1), token_run("reverse_kl", 0, 200.0, 19.0), token_run("reverse_kl", 1, 197.0, 19.1),
    ])
    table = summarize(runs, ["ce", "kd", "reverse_kl"], tokens)
    # the best top-1 (reverse_kl) has the worst perplexity: the token table ranks by perplexity
    assert table["method"].to_list() == ["kd", "ce", "reverse_kl"]
    assert summarize(runs, ["ce", "kd", "reverse_kl"])["method"].to_list() == ["reverse_kl", "kd", "ce"]  # images: top-1
    kd = table.row(0, named=True)
    assert kd["val_ppl_mean"] == 170.5 and kd["ppl_mean"] == 160.5 and kd["val_ppl_vs_ce"] == -10.5
    assert "top1_vs_ce" not in table.columns
    rows = {(c["method"], c["reference"]): c for c in comparisons(runs, ["ce", "kd", "reverse_kl"], tokens)}
    kd_ce = rows[("kd", "ce")]
    assert kd_ce["val_ppl_diff_mean"] == -10.5 and kd_ce["val_ppl_record"] == "2/0/0"  # lower perplexity: a win
    assert kd_ce["ppl_record"] == "2/0/0" and "top1_record" not in kd_ce
    assert rows[("reverse_kl", "ce")]["val_ppl_record"] == "0/0/2"


def test_paired_counts_a_lower_value_as_a_win_when_lower_is_better():
    from tasks.aggregate import paired

    assert paired([-2.0, 0.0, 1.0], higher_is_better=False)[1] == "1/1/1"
    assert paired([-2.0, -1.0, 3.0], higher_is_better=False)[1] == "2/0/1"
    assert paired([-2.0, -1.0, 3.0])[1] == "1/0/2"


def test_a_token_studys_summary_md_names_perplexity_and_token_accuracy(tmp_path):
    from tasks import aggregate
    from tests.helpers.token_results import fake_token_study

    cfg, teacher, evaluations, data, logits = fake_token_study(tmp_path)
    aggregate.run(cfg, teacher, evaluations, tmp_path / "results", None, data, logits)
    md = (tmp_path / "results" / "summary.md").read_text()
    assert md.startswith("# tiny-lm: gpt_nano students of a gpt_nano teacher (teacher val. perplexity 119.00, "
                         "token accuracy 21.40%)\n")
    assert ("| method | seeds | val. perplexity | test perplexity | token acc. last | token acc. best | best epoch "
            "| top-5 | NLL | ECE | agreement | KL to teacher |") in md
    assert "top-1" not in md.replace("top-1 over the test tokens", "")
    rows = [line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    assert rows == ["kd", "ce", "reverse_kl"]
    assert "| kd | 2 | 170.50 ± 0.71† | 160.50 ± 0.71† | 18.05 ± 0.07† |" in md
    csv = (tmp_path / "results" / "summary.csv").read_text().splitlines()
    assert csv[0].split(",")[:5] == ["method", "seeds", "failed", "val_ppl_mean", "val_ppl_std"]
    # the token cache is an input of the key (its size is in the report); an image cache would not be
    key = aggregate.key(cfg, teacher, evaluations, None, data, logits)
    assert key != aggregate.key(cfg, teacher, evaluations, None, data)
    image_cache = logits | {"meta": {"teacher_key": "t" * 24}}
    assert aggregate.key(cfg, teacher, evaluations, None, data, image_cache) == aggregate.key(cfg, teacher, evaluations, None, data)
