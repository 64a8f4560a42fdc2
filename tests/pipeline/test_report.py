"""The study report rendered from a real tiny study: every section and figure, numbers equal to summary.json,
the self-contained per-run report.html, the written conclusion, and the live MLflow runs of the study."""
import base64
import copy
import json
import math
import re

import pytest

from kdlib.config import parse_config
from kdlib import artifacts
from tasks import aggregate, cache_logits, evaluate, finetune_teacher, prepare_data, tracking, train_student, train_teacher
from tasks.report import NC_COLUMNS, conclusion, fmt, fmt_p, method_colours, pm
from tests.helpers.study import TINY_STUDY

METHODS = ["ce", "kd", "ce+binarykl_norm", "dhkd"]
SECTIONS = ["Results", "Paired comparison over seeds", "Accuracy curves", "Gradient conflict", "Neural collapse",
            "Teacher fidelity and calibration", "Reliability diagrams", "Conclusion"]
FIGURES = ["figures/accuracy.png", "figures/conflict.png", "figures/collapse.png", "figures/nc_curves.png", "figures/reliability.png"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"].update(methods=METHODS, seeds=[0, 1])
    raw["methods"] = {m: {} for m in METHODS}
    raw["methods"]["dhkd"] = {"aux_head": "linear"}  # NC3 of the second head needs a linear one
    raw["evaluation"].update(nc_every=1, probe_size=32)
    raw["tracking"].update(uri=f"sqlite:///{root}/mlflow.db")
    raw["runtime"]["store"] = str(root / "store")
    # an extra teacher and a fine-tuned one: their rows in the report and their MLflow runs
    raw["teachers"] = {"second": {"arch": "mlp", "seed": 1, "schedule": {"epochs": 2, "batch_size": 128, "lr": 0.05}}}
    raw["finetuned_teachers"] = {"teacher_mcmi": {"lam": -0.5, "schedule": {"epochs": 1, "batch_size": 128, "lr": 0.01}}}
    cfg = parse_config(raw)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(root)  # MLflow puts its artifact root under the working directory
    parent = tracking.start_parent(cfg, "dvc", {}, source="dvc.yaml")
    data = prepare_data.run(cfg, root / "data")
    teacher = train_teacher.run(cfg, data, root / "teacher", parent_run_id=parent)
    teachers = {
        "second": train_teacher.run(cfg, data, root / "teachers" / "second", "second", parent),
        "teacher_mcmi": finetune_teacher.run(cfg, "teacher_mcmi", data, teacher, root / "teachers" / "teacher_mcmi", parent),
    }
    logits = cache_logits.run(cfg, data, teacher, root / "logits")
    evaluations = []
    for m in METHODS:
        for s in cfg.students.seeds:
            student = train_student.run(cfg, m, s, data, logits, root / "students" / m / str(s), parent)
            evaluations.append(evaluate.run(cfg, data, logits, student, root / "evaluations" / m / str(s), parent))
    manifest = aggregate.run(cfg, teacher, evaluations, root / "results", teachers, data)
    aggregate.publish(cfg, manifest, root / "results" / "report.html", parent, "dvc", {"teacher": teacher, **teachers},
                      evaluations)
    tracking.finish_parent(cfg, parent)
    monkeypatch.undo()
    out = root / "results"
    manifest["meta"]["parent"] = parent  # for the MLflow tests (never in the artifact's own manifest)
    return out, json.loads((out / "summary.json").read_text()), (out / "report.md").read_text(), manifest


def table_rows(md: str, section: str) -> list[list[str]]:
    """The data rows of the tables of one `## section` of the Markdown report."""
    body = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()
            if line.startswith("|") and not line.startswith("|---") and not line.startswith("| method |")]


def test_every_section_and_figure_exists(study):
    out, _, md, manifest = study
    html = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"\n## {section}\n" in md and f"<h2>{section}</h2>" in html
    for figure in FIGURES:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
        assert f"]({figure})" in md and f'src="{figure}"' not in html
        assert figure in manifest["files"]  # hashed in the aggregate artifact
    # report.html is self-contained (MLflow's sandboxed preview loads no relative path) and names its
    # pipeline run, so it is written beside the artifact, never in its manifest
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(FIGURES) == html.count("<img ")
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((out / f).read_bytes() for f in FIGURES)
    assert "report.html" not in manifest["files"] and "report.md" in manifest["files"]


def test_results_table_equals_summary_json(study):
    _, summary, md, _ = study
    rows = {r[0]: r for r in table_rows(md, "Results")}
    assert list(rows) == [m["method"] for m in summary["methods"]]
    for m in summary["methods"]:
        r = rows[m["method"]]
        assert r[1] == str(m["seeds"]) == "2"
        # two seeds: every mean ± std carries the dagger of a statistic resting on fewer than 3
        assert r[2] == f"{m['top1_mean']:.2f} ± {m['top1_std']:.2f}†"
        assert r[3] == f"{m['best_top1_mean']:.2f} ± {m['best_top1_std']:.2f}†"
        assert r[5] == f"{m['top1_mean'] - next(x['top1_mean'] for x in summary['methods'] if x['method'] == 'kd'):+.2f}"
        assert r[6] == f"{m['top1_mean'] - next(x['top1_mean'] for x in summary['methods'] if x['method'] == 'ce'):+.2f}"


def test_paired_comparison_equals_summary_json_and_the_runs(study):
    _, summary, md, _ = study
    rows = table_rows(md, "Paired comparison over seeds")
    assert len(rows) == len(summary["comparisons"]) == 2 * (len(METHODS) - 1)
    runs = {(r["method"], r["seed"]): r for r in summary["runs"]}
    for row, c in zip(rows, summary["comparisons"]):
        diffs = [runs[(c["method"], s)]["top1"] - runs[(c["reference"], s)]["top1"] for s in (0, 1)]
        assert c["top1_diff_mean"] == pytest.approx(sum(diffs) / 2)
        assert c["top1_record"] == f"{sum(d > 0 for d in diffs)}/{sum(d == 0 for d in diffs)}/{sum(d < 0 for d in diffs)}"
        if diffs[0] != diffs[1]:  # paired t with 1 degree of freedom: a Cauchy tail, p = 1 - (2/pi) atan|t|
            t = (sum(diffs) / 2) / (abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2))
            assert c["top1_p"] == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)), rel=1e-9)
        dagger = lambda p: fmt_p(p) + ("†" if p is not None else "")  # noqa: E731 - 2 pairs: a weak test
        assert row == [c["method"], "2", fmt(c["top1_diff_mean"], 2, True), c["top1_record"], dagger(c["top1_p"]),
                       fmt(c["best_top1_diff_mean"], 2, True), c["best_top1_record"], dagger(c["best_top1_p"])]


def test_conflict_and_collapse_tables_equal_summary_json(study):
    _, summary, md, _ = study
    conflict = table_rows(md, "Gradient conflict")
    assert [r[:2] for r in conflict] == [[c["method"], c["pair"]] for c in summary["conflict"]]
    assert {c["method"] for c in summary["conflict"]} == {"kd", "ce+binarykl_norm", "dhkd"}  # ce has one term
    for row, c in zip(conflict, summary["conflict"]):
        assert row[2:] == [fmt(c["head"], 3), fmt(c["backbone"], 3)]
    dhkd = next(c for c in summary["conflict"] if c["method"] == "dhkd")
    assert dhkd["head"] is None and dhkd["backbone"] is not None  # CE and the aux loss share no head weight: undefined
    assert next(r for r in conflict if r[0] == "dhkd")[2] == "n/a"
    nc = {r[0]: r[1:] for r in table_rows(md, "Neural collapse")}
    keys = [(k, d) for k, _, d in NC_COLUMNS if any(x.get(f"{k}_mean") is not None for x in summary["methods"])]
    for m in summary["methods"]:
        assert nc[m["method"]] == [pm(m, k, d) for k, d in keys]
        assert m["nc/nc1_mean"] >= 0.0
    assert next(m for m in summary["methods"] if m["method"] == "dhkd")["nc/aux_head_nc3_mean"] is not None


def test_fidelity_table_equals_summary_json(study):
    _, summary, md, _ = study
    rows = {r[0]: r[1:] for r in table_rows(md, "Teacher fidelity and calibration")}
    for m in summary["methods"]:
        assert rows[m["method"]] == [pm(m, "agreement"), pm(m, "kl_to_teacher", 3), pm(m, "nontarget_rank_corr", 3), pm(m, "ece")]
        assert -1.0 <= m["nontarget_rank_corr_mean"] <= 1.0


def test_every_number_of_the_report_is_in_summary_json(study):
    """No number in the report's tables comes from anywhere but summary.json (formatted)."""
    _, summary, md, _ = study
    formatted = set()

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            formatted.update({str(v), f"{v:.1f}", f"{v:.2f}", f"{v:.3f}", f"{v:+.2f}", f"{v:+.3f}", f"{v:.2g}"})

    walk(summary)
    for m in summary["methods"]:  # deltas are differences of two summary numbers
        formatted.update(f"{m['top1_mean'] - r['top1_mean']:+.2f}" for r in summary["methods"])
    numbers = [n for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")
               for n in re.findall(r"[+-]?\d+\.\d+", line)]
    assert numbers and all(n in formatted for n in numbers), [n for n in numbers if n not in formatted]


def test_report_is_logged_to_the_mlflow_parent_run(study):
    out, _, _, manifest = study
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.parent}/mlflow.db")
    run_id = manifest["meta"]["parent"]
    parent = client.get_run(run_id)
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "figures")}
    assert {"report.md", "report.html", "summary.md", *FIGURES} <= names
    assert not parent.data.metrics  # per-method numbers live on the student runs, tagged with their method
    assert parent.data.tags["aggregate_key"] == manifest["key"] and "digits" in parent.data.tags["mlflow.note.content"]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # "Machine learning", not GenAI
    student = client.search_runs([parent.info.experiment_id], "tags.method = 'dhkd'")[0]
    assert student.info.status == "FINISHED" and student.data.tags["mlflow.source.name"] == "tasks/train_student.py"
    assert len(client.get_metric_history(student.info.run_id, "epoch/grad_cos/backbone/ce_vs_aux_binarykl_norm")) == 2
    # separate heads: no head cosine at all (undefined), not a flat 0
    assert not any(k.startswith("epoch/grad_cos/head/") for k in student.data.metrics)
    assert {"final/top1", "final/agreement", "final/nc/aux_head_nc3"} <= student.data.metrics.keys()
    kd = client.search_runs([parent.info.experiment_id], "tags.method = 'kd'")[0]
    assert "final/nc/aux_head_nc3" not in kd.data.metrics  # no aux head: nothing logged, not a 0
    files = {a.path for a in client.list_artifacts(student.info.run_id)}
    assert {"history.json", "manifest.json", "evaluation"} <= files


def test_teachers_table_and_mlflow_runs_equal_the_teachers_manifests(study):
    """Every teacher (trained or fine-tuned) has its row in summary.json, summary.md and
    report.md with its manifest's numbers, and its MLflow child run with its history."""
    out, summary, md, manifest = study
    from mlflow.tracking import MlflowClient

    root = out.parent
    made = {"teacher": artifacts.read_manifest(root / "teacher"),
            **{n: artifacts.read_manifest(root / "teachers" / n) for n in ("second", "teacher_mcmi")}}
    rows = {r["name"]: r for r in summary["teachers"]}
    assert list(rows) == ["teacher", "second", "teacher_mcmi"]
    for name, m in made.items():
        history = json.loads((root / ("teacher" if name == "teacher" else f"teachers/{name}") / "history.json").read_text())
        assert rows[name] | {"key": m["key"]} == rows[name]
        assert (rows[name]["arch"], rows[name]["top1"], rows[name]["best_top1"], rows[name]["best_epoch"], rows[name]["epochs"]) == (
            m["meta"]["arch"], m["meta"]["test"]["top1"], m["meta"]["best_top1"], m["meta"]["best_epoch"], len(history))
    assert rows["teacher"]["made"] == rows["second"]["made"] == "trained" and rows["second"]["arch"] == "mlp"
    assert rows["teacher_mcmi"] | {"made": "finetuned", "regularizer": "mcmi", "lam": -0.5, "from": "teacher"} == rows["teacher_mcmi"]
    assert made["teacher_mcmi"]["meta"]["base_key"] == made["teacher"]["key"]
    assert rows["second"]["epochs"] == 2 and rows["teacher_mcmi"]["epochs"] == 1

    expected = [[r["name"], r["arch"], how, f"{r['top1']:.2f}", f"{r['best_top1']:.2f}", f"{r['best_epoch']}/{r['epochs']}"]
                for r, how in zip(summary["teachers"], ["trained", "trained", "fine-tuned from teacher (mcmi, λ = -0.5)"])]
    body = md.split("## Teachers\n", 1)[1].split("\n## ", 1)[0]
    assert [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()
            if line.startswith("|") and not line.startswith(("|---", "| teacher | arch"))] == expected
    summary_md = (out / "summary.md").read_text().split("Teachers (", 1)[1]
    assert [[c.strip() for c in line.strip("|").split("|")] for line in summary_md.splitlines()
            if line.startswith("|") and not line.startswith(("|---", "| teacher | arch"))] == expected

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    parent = client.get_run(manifest["meta"]["parent"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.role = 'teacher'")
    runs = {r.data.tags["teacher"]: r for r in children}
    assert set(runs) == set(made)
    for name, m in made.items():
        r = runs[name]
        assert r.data.tags["artifact_key"] == m["key"] and r.data.tags["made"] == rows[name]["made"]
        assert r.data.metrics["final/top1"] == pytest.approx(m["meta"]["test"]["top1"])
        assert r.data.metrics["final/best_top1"] == pytest.approx(m["meta"]["best_top1"])
        assert len(client.get_metric_history(r.info.run_id, "epoch/test_top1")) == rows[name]["epochs"]
    assert runs["second"].data.params["teacher.arch"] == "mlp" and runs["second"].data.params["teacher.seed"] == "1"
    assert runs["teacher_mcmi"].data.params["finetune.lam"] == "-0.5" and runs["teacher_mcmi"].data.params["from"] == "teacher"
    assert runs["teacher_mcmi"].data.params["finetune.regularizer"] == "mcmi"


def test_a_teacher_that_is_not_this_studys_is_refused(study, tmp_path, monkeypatch, capsys):
    """A fine-tuned teacher made from another `teacher`, or (DVC) a teacher folder its
    logit cache does not pin, stops aggregate with the teacher's name, not a wrong row."""
    import shutil

    root = study[0].parent
    teacher = artifacts.read_manifest(root / "teacher")
    tuned = artifacts.read_manifest(root / "teachers" / "teacher_mcmi")
    other = tuned | {"meta": tuned["meta"] | {"base_key": "0" * 24}}
    with pytest.raises(ValueError, match="finetuned_teachers.teacher_mcmi: fine-tuned from teacher 0{24}"):
        aggregate.teacher_rows(teacher, {"teacher_mcmi": other})

    shutil.copytree(root / "teachers" / "second", tmp_path / "artifacts/teachers/second")
    artifacts.write_manifest(tmp_path / "artifacts/logits/second", "cache_logits", "c" * 24, {"teacher_key": "f" * 24})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        aggregate.dvc_teacher("train_teacher", "second")
    assert stop.value.code == 2
    assert "artifacts/teachers/second" in capsys.readouterr().err
    artifacts.write_manifest(tmp_path / "artifacts/logits/second", "cache_logits", "c" * 24,
                             {"teacher_key": artifacts.read_manifest(root / "teachers" / "second")["key"]})
    assert aggregate.dvc_teacher("train_teacher", "second")["meta"]["arch"] == "mlp"


@pytest.mark.parametrize("n", [4, 10, 11, 26, 60])
def test_every_method_of_a_study_gets_its_own_colour(n):
    methods = [f"m{i}" for i in range(n)]
    colours = method_colours(methods)
    assert list(colours) == methods
    assert len(set(colours.values())) == n


def test_how_made_names_every_kind_of_teacher():
    from tasks.report import how_made

    assert how_made({"made": "trained"}) == "trained"
    assert how_made({"made": "checkpoint"}) == "released checkpoint"
    assert how_made({"made": "untrained"}) == "untrained (random init)"
    assert how_made({"made": "finetuned", "from": "teacher", "regularizer": "mcmi", "lam": -0.5}) == (
        "fine-tuned from teacher (mcmi, λ = -0.5)"
    )


def test_report_html_says_what_ran_where(study):
    out, summary, md, manifest = study
    html = (out / "report.html").read_text()
    for row in ("data set", "teacher", "schedule", "commit", "date", "MLflow parent run"):
        assert f"<td>{row}</td>" in html, row
    assert manifest["meta"]["parent"] in html and "1437 train / 360 test images" in html
    assert "MLflow parent run" not in md and "commit" not in md  # the artifact's report is the same for every run
    assert "† rests on fewer than 3 seeds" in md  # two seeds: every mean ± std and p carries the caveat
    assert all(p.endswith("†") for p in re.findall(r"\| (0\.\d+†?) \|", md.split("## Paired comparison", 1)[1].split("##")[0]))


def test_the_conclusion_is_written_from_the_numbers(study):
    _, summary, md, _ = study
    text = md.split("## Conclusion\n", 1)[1]
    best = summary["methods"][0]
    assert f"`{best['method']}` has the highest last-epoch top-1, {best['top1_mean']:.2f}%" in text
    assert "support no claim of significance" in text  # 2 seeds
    assert "share no head weight (head cosine n/a)" in text and "`dhkd`" in text


def row(method, top1, std, seeds=3, **extra):
    return {"method": method, "top1_mean": top1, "top1_std": std, "seeds": seeds, **extra}


def summary_of(methods, teacher_top1=80.0, comparisons=(), conflict=()):
    return {"methods": methods, "teacher": {"test": {"top1": teacher_top1}}, "comparisons": list(comparisons),
            "conflict": list(conflict)}


def test_conclusion_separates_what_exceeds_the_seed_spread():
    methods = [row("dhkd", 70.0, 0.5), row("kd", 68.0, 0.5), row("ce", 67.8, 0.4)]
    comparisons = [{"method": m, "reference": "ce", "n": 3, "top1_diff_mean": d, "top1_p": p}
                   for m, d, p in (("dhkd", 2.2, 0.01), ("kd", 0.2, 0.6))]
    text = " ".join(conclusion(summary_of(methods, comparisons=comparisons)))
    assert "`dhkd` has the highest last-epoch top-1, 70.00%, 2.00 points above `kd`" in text
    assert "exceeds the two methods' seed spread" in text
    assert "Against `ce`, `dhkd` (+2.20) differs by more than the seed spread; `kd` does not." in text
    assert "first indication" not in text  # 3 seeds
    assert "`dhkd` vs `ce` (p 0.01)" in text and "`kd` vs `ce`" not in text


def test_conclusion_never_claims_a_difference_within_the_spread_or_from_one_seed():
    close = [row("kd", 70.0, 1.0), row("ce", 69.5, 1.0)]
    assert "not separated" in " ".join(conclusion(summary_of(close)))
    single = [row("kd", 70.0, None, seeds=1), row("ce", 60.0, None, seeds=1)]
    text = " ".join(conclusion(summary_of(single)))
    assert "no difference here can be told from seed noise" in text and "exceeds" not in text


def test_conclusion_warns_about_a_useless_teacher_and_the_ceiling():
    text = " ".join(conclusion(summary_of([row("kd", 70.0, 0.1), row("ce", 71.0, 0.1)], teacher_top1=70.5)))
    assert "⚠ The teacher (70.50%) is no better than the CE student (71.00%)" in text
    text = " ".join(conclusion(summary_of([row("kd", 99.8, 0.1), row("ce", 99.5, 0.1)], teacher_top1=99.9)))
    assert "⚠ Every method is at the ceiling" in text and "no better than the CE" not in text


def test_conclusion_reads_the_gradient_conflict():
    conflict = [{"method": "ce+binarykl_norm", "pair": "ce vs binarykl_norm", "head": -0.2, "backbone": 0.3},
                {"method": "dhkd", "pair": "ce vs aux_binarykl_norm", "head": None, "backbone": 0.1}]
    text = " ".join(conclusion(summary_of([row("dhkd", 70.0, 0.5), row("ce", 60.0, 0.5)], conflict=conflict)))
    assert "On a shared head, `ce+binarykl_norm` ce vs binarykl_norm (-0.200) pull apart" in text
    assert "the head agrees less than the backbone for 1 of 1 pair(s)" in text
    assert "`dhkd` ce vs aux_binarykl_norm (backbone +0.100)" in text


# --------------------------------------------------------------------------- #
# a token study (fake evaluation records: tests/helpers/token_results.py)
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def token_study(tmp_path_factory):
    from tests.helpers.token_results import fake_token_study

    root = tmp_path_factory.mktemp("token_report")
    cfg, teacher, evaluations, data, logits = fake_token_study(root)
    manifest = aggregate.run(cfg, teacher, evaluations, root / "results", None, data, logits)
    aggregate.publish(cfg, manifest, root / "results" / "report.html", None, "dvc", {"teacher": teacher}, evaluations)
    out = root / "results"
    return out, json.loads((out / "summary.json").read_text()), (out / "report.md").read_text(), manifest


def test_a_token_reports_header_says_tokens_perplexity_and_the_cache_size(token_study):
    out, summary, md, _ = token_study
    setup = dict(tuple(c.strip() for c in line.strip("|").split("|")) for line in md.split("## Results", 1)[0].splitlines()
                 if line.startswith("| ") and "study set-up" not in line)
    assert setup["data set"] == ("`text` (text-pydoc-s0-v300-t16, corpus pydoc): 120 train / 12 validation / 11 test windows "
                                 "of 16 tokens (1920 / 192 / 176 tokens), vocabulary 300")
    assert setup["teacher"] == ("`gpt_nano` (trained), validation perplexity 119.00, test perplexity 113.00, "
                                "token accuracy 21.40%")
    assert setup["logit cache"] == ("top-8 teacher logits and the log-normaliser per token: 36 bytes per token, vs 600 for "
                                    "a dense fp16 cache of the same tokens (17× smaller)")
    assert "adamw" in setup["schedule"] and "momentum" not in setup["schedule"]
    assert "images" not in md and "images" not in (out / "report.html").read_text()
    assert summary["setup"]["cache"] == {"topk": 8, "bytes_per_token": 36.0, "dense_bytes_per_token": 600}


def test_a_token_reports_tables_rank_and_compare_on_validation_perplexity(token_study):
    _, summary, md, _ = token_study
    results = md.split("## Results\n", 1)[1].split("\n## ", 1)[0]
    assert ("| method | seeds | val. perplexity | test perplexity | token acc. last | token acc. best | best epoch "
            "| Δ val. ppl vs kd | Δ val. ppl vs ce | top-5 | NLL |") in results
    rows = table_rows(md, "Results")
    assert [r[0] for r in rows] == [m["method"] for m in summary["methods"]] == ["kd", "ce", "reverse_kl"]
    for r, m in zip(rows, summary["methods"]):
        assert r[2:4] == [pm(m, "val_ppl"), pm(m, "ppl")] and r[7:9] == [fmt(m["val_ppl_vs_kd"], 2, True), fmt(m["val_ppl_vs_ce"], 2, True)]
    assert "| method | paired seeds | Δ val. ppl | wins/ties/losses | p (val. ppl) | Δ test ppl |" in md
    paired = {(r[0], i // 2): r for i, r in enumerate(table_rows(md, "Paired comparison over seeds"))}
    assert paired[("kd", 1)][2:4] == ["-10.50", "2/0/0"]  # against ce: lower perplexity on both seeds, two wins
    assert "Neural collapse" in md and "Not measured in a token study" in md
    assert "| method | agreement | KL to teacher (top-K) | ECE |" in md and "non-target" not in md
    curve = json.loads((token_study[0] / "curves" / "kd.json").read_text())
    assert {"test_top1", "test_nll", "loss", "grad_cos/head/ce_vs_kd"} <= curve[0].keys()


def test_a_token_report_draws_the_perplexity_figure_and_no_nc_figure(token_study):
    out, _, md, manifest = token_study
    figures = ["figures/perplexity.png", "figures/accuracy.png", "figures/conflict.png", "figures/reliability.png"]
    assert sorted(f for f in manifest["files"] if f.startswith("figures/")) == sorted(figures)
    html = (out / "report.html").read_text()
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({figure})" in md
    assert html.count("<img ") == len(figures) and "figures/collapse" not in md and "figures/nc_curves" not in md
    assert "\n## Validation perplexity\n" in md and "\n## Per-epoch curves\n" in md and "Accuracy curves" not in md


def test_a_token_reports_conclusion_speaks_of_perplexity(token_study):
    _, summary, md, _ = token_study
    text = md.split("## Conclusion\n", 1)[1]
    assert "`kd` has the lowest validation perplexity, 170.50, 10.50 below `ce` (181.00)." in text
    assert "The margin exceeds the two methods' seed spread (std 0.71 + 1.41), but with 2 seeds that is weak evidence." in text
    assert "Against `ce` (181.00), `kd`'s validation perplexity is 10.50 lower, more than the seed spread" in text
    assert "Against `ce` (Δ validation perplexity: negative is better), `kd` (-10.50), `reverse_kl` (+17.50) differ" in text
    assert "no better than the CE student" not in text and "top-1" not in text


def token_summary(methods, teacher_val_ppl):
    return {"methods": methods, "setup": {"data": {"kind": "tokens"}}, "comparisons": [], "conflict": [],
            "teacher": {"test": {"top1": 20.0, "val_ppl": teacher_val_ppl}}}


def test_a_token_conclusion_warns_when_the_teacher_is_no_better_on_perplexity():
    def row_(method, val_ppl, std, seeds=3):
        return {"method": method, "val_ppl_mean": val_ppl, "val_ppl_std": std, "top1_mean": 99.5, "seeds": seeds}

    methods = [row_("kd", 150.0, 1.0), row_("ce", 151.0, 1.0)]
    text = " ".join(conclusion(token_summary(methods, teacher_val_ppl=160.0)))
    assert "⚠ The teacher (validation perplexity 160.00) is no better than the CE student (151.00)" in text
    assert "within the seed spread (std 1.00 + 1.00)" in text and "ceiling" not in text  # no top-1 ceiling for tokens
    assert "no better than the CE" not in " ".join(conclusion(token_summary(methods, teacher_val_ppl=120.0)))
    single = " ".join(conclusion(token_summary([row_("kd", 150.0, None, 1)], 120.0)))
    assert single == "Only `kd` finished, at 150.00 validation perplexity: no comparison is possible."
