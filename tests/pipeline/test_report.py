"""The study report rendered from a real tiny study: every section and figure, numbers equal to summary.json."""
import copy
import json
import math
import re

import pytest

from kdlib.config import parse_config
from kdlib import artifacts
from tasks import aggregate, cache_logits, evaluate, finetune_teacher, prepare_data, train_student, train_teacher
from tasks.report import NC_COLUMNS, fmt, fmt_p, method_colours, pm
from tests.helpers.study import TINY_STUDY

METHODS = ["ce", "kd", "ce+binarykl_norm", "dhkd"]
SECTIONS = ["Results", "Paired comparison over seeds", "Accuracy curves", "Gradient conflict", "Neural collapse",
            "Teacher fidelity and calibration", "Reliability diagrams"]
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
    data = prepare_data.run(cfg, root / "data")
    teacher = train_teacher.run(cfg, data, root / "teacher")
    teachers = {
        "second": train_teacher.run(cfg, data, root / "teachers" / "second", "second"),
        "teacher_mcmi": finetune_teacher.run(cfg, "teacher_mcmi", data, teacher, root / "teachers" / "teacher_mcmi"),
    }
    logits = cache_logits.run(cfg, data, teacher, root / "logits")
    evaluations = []
    for m in METHODS:
        for s in cfg.students.seeds:
            student = train_student.run(cfg, m, s, data, logits, root / "students" / m / str(s))
            evaluations.append(evaluate.run(cfg, data, logits, student, root / "evaluations" / m / str(s)))
    manifest = aggregate.run(cfg, teacher, evaluations, root / "results", teachers)
    monkeypatch.undo()
    out = root / "results"
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
        assert f"]({figure})" in md and f'src="{figure}"' in html
        assert figure in manifest["files"]  # hashed in the aggregate artifact


def test_results_table_equals_summary_json(study):
    _, summary, md, _ = study
    rows = {r[0]: r for r in table_rows(md, "Results")}
    assert list(rows) == [m["method"] for m in summary["methods"]]
    for m in summary["methods"]:
        r = rows[m["method"]]
        assert r[1] == str(m["seeds"]) == "2"
        assert r[2] == f"{m['top1_mean']:.2f} ± {m['top1_std']:.2f}"
        assert r[3] == f"{m['best_top1_mean']:.2f} ± {m['best_top1_std']:.2f}"
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
        assert row == [c["method"], "2", fmt(c["top1_diff_mean"], 2, True), c["top1_record"], fmt_p(c["top1_p"]),
                       fmt(c["best_top1_diff_mean"], 2, True), c["best_top1_record"], fmt_p(c["best_top1_p"])]


def test_conflict_and_collapse_tables_equal_summary_json(study):
    _, summary, md, _ = study
    conflict = table_rows(md, "Gradient conflict")
    assert [r[:2] for r in conflict] == [[c["method"], c["pair"]] for c in summary["conflict"]]
    assert {c["method"] for c in summary["conflict"]} == {"kd", "ce+binarykl_norm", "dhkd"}  # ce has one term
    for row, c in zip(conflict, summary["conflict"]):
        assert row[2:] == [fmt(c["head"], 3), fmt(c["backbone"], 3)]
    dhkd = next(c for c in summary["conflict"] if c["method"] == "dhkd")
    assert dhkd["head"] == 0.0  # CE and the aux loss never share a head parameter
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
    run_id = manifest["meta"]["mlflow_parent_run_id"]
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "figures")}
    assert {"report.md", "report.html", *FIGURES} <= names
    student = client.search_runs([client.get_run(run_id).info.experiment_id], "tags.method = 'dhkd'")[0]
    history = client.get_metric_history(student.info.run_id, "grad_cos/head/ce_vs_aux_binarykl_norm")
    assert len(history) == 2 and all(m.value == 0.0 for m in history)  # one value per epoch


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
    parent = client.get_run(manifest["meta"]["mlflow_parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.role = 'teacher'")
    runs = {r.data.tags["teacher"]: r for r in children}
    assert set(runs) == set(made)
    for name, m in made.items():
        r = runs[name]
        assert r.data.tags["artifact_key"] == m["key"] and r.data.tags["made"] == rows[name]["made"]
        assert r.data.metrics["final/top1"] == pytest.approx(m["meta"]["test"]["top1"])
        assert r.data.metrics["final/best_top1"] == pytest.approx(m["meta"]["best_top1"])
        assert len(client.get_metric_history(r.info.run_id, "test_top1")) == rows[name]["epochs"]
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
