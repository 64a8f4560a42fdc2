"""The DVC front door: `dvc repro` runs the DAG; one changed method setting re-runs only its stages;
the cache's extra tensors (teacher features, the sparse top-K cache) reach the students that read them."""
import copy
import json
import sqlite3
import subprocess

import pytest
import yaml

from kdlib import artifacts
from tests.helpers.data import cifar100_members, write_tar
from tests.helpers.project import BIN, make_project, project_env, ran_stages, run
from tests.helpers.study import TINY_STUDY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = make_project(tmp_path_factory.mktemp("dvc"), TINY_STUDY)
    env = project_env(dest)
    first = run([str(BIN / "dvc"), "repro"], dest, env, timeout=400)
    return dest, env, first.stdout


def test_first_repro_runs_every_stage(project):
    dest, env, output = project
    assert ran_stages(output) == {
        "check_study", "prepare_data", "train_teacher", "cache_logits",
        "train_student@ce-0", "train_student@kd-0", "evaluate@ce-0", "evaluate@kd-0", "aggregate",
    }
    summary = json.loads((dest / "results/summary.json").read_text())
    assert {row["method"] for row in summary["methods"]} == {"ce", "kd"}
    assert (dest / "results/summary.csv").read_text().startswith("method,")
    assert "| kd |" in (dest / "results/summary.md").read_text()
    assert sorted(p.name for p in (dest / "results/curves").iterdir()) == ["ce.json", "kd.json"]


def test_mlflow_run_tree(project):
    """One parent for the repro, a live run per computed step nested under it, logged by the stage that computed it."""
    dest, _, output = project
    db = sqlite3.connect(dest / "mlflow.db")
    runs = {r: (name, status) for r, name, status in db.execute("select run_uuid, name, status from runs").fetchall()}
    tags = {}
    for run, key, value in db.execute("select run_uuid, key, value from tags").fetchall():
        tags.setdefault(run, {})[key] = value
    roots = [r for r in runs if "mlflow.parentRunId" not in tags[r]]
    assert len(roots) == 1
    root = roots[0]
    assert runs[root] == (runs[root][0], "FINISHED") and runs[root][0].startswith("tiny ")
    assert tags[root]["front_door"] == "dvc" and tags[root]["aggregate_key"] == json.loads(
        (dest / "results/manifest.json").read_text())["key"]
    assert "**Data set** `digits`: 1437 train / 360 test images" in tags[root]["mlflow.note.content"]
    children = {runs[r][0]: r for r in runs if tags[r].get("mlflow.parentRunId") == root}
    assert set(children) == {"teacher resnet8", "ce seed 0", "kd seed 0"}
    assert {runs[r][1] for r in children.values()} == {"FINISHED"}
    assert tags[children["kd seed 0"]]["mlflow.source.name"] == "tasks/train_student.py"
    assert tags[children["teacher resnet8"]]["mlflow.source.name"] == "tasks/train_teacher.py"
    assert not any(k.startswith("reused/") for k in tags[root])  # everything was computed in this repro
    kd_run = children["kd seed 0"]
    steps = db.execute("select step from metrics where run_uuid = ? and key = 'epoch/loss/kd' order by step", (kd_run,)).fetchall()
    assert [s for (s,) in steps] == [1, 2]
    final = dict(db.execute("select key, value from latest_metrics where run_uuid = ? and key like 'final/%'", (kd_run,)).fetchall())
    assert final["final/top1"] == json.loads((dest / "artifacts/evaluations/kd/seed0/metrics.json").read_text())["top1"]
    params = dict(db.execute("select key, value from params where run_uuid = ?", (kd_run,)).fetchall())
    assert params["method"] == "kd" and params["settings.temperature"] == "4.0"
    kind = db.execute("select value from experiment_tags where key = 'mlflow.experimentKind'").fetchall()
    assert kind == [("custom_model_development",)]
    # the report of this repro names its parent run; the artifact's own files never do
    assert root in (dest / "results/report.html").read_text()
    assert not any(root in p.read_text() for p in (dest / "artifacts").rglob("*.json"))
    assert "report.html" not in json.loads((dest / "results/manifest.json").read_text())["files"]
    assert not (dest / ".kdflow/mlflow/dvc-parent.json").exists()  # aggregate ended the parent


def test_the_first_repro_keeps_a_time_account(project):
    """Each stage that ran records where its time went in the repro's time ledger and on its
    MLflow run; the repro's report.html ends with the table. Stages after the first few ran
    forked from the warm server: no interpreter start or imports in their account."""
    dest, _, _ = project
    sessions = sorted((dest / ".kdflow/time").glob("dvc-*"), key=lambda p: p.stat().st_mtime)
    records = {p.stem: json.loads(p.read_text()) for p in sessions[0].glob("*.json")}
    assert set(records) == {"prepare_data", "train_teacher", "cache_logits", "train_student@ce-0", "train_student@kd-0",
                            "evaluate@ce-0", "evaluate@kd-0", "aggregate"}
    for name, record in records.items():
        assert record["wall"] + 1e-3 >= sum(record["seconds"].values()) and record["other"] >= 0, name
    for name in ("train_student@ce-0", "train_student@kd-0"):
        assert records[name]["seconds"]["compute"] > 0 and records[name]["seconds"]["startup"] < 1.0, records[name]
    assert records["evaluate@kd-0"]["seconds"]["evaluation"] > 0
    db = sqlite3.connect(dest / "mlflow.db")
    logged = {key for (key,) in db.execute(
        "select m.key from metrics m join runs r on m.run_uuid = r.run_uuid where r.name = 'kd seed 0'").fetchall()}
    assert {"time/compute", "time/startup", "time/tracking", "time/wall"} <= logged
    page = (dest / "results/report.html").read_text()
    assert "Where the time went" in page and "<code>dvc repro</code>: " in page
    assert "<td>train_student</td>" in page and "of wall time from its start to this report" in page
    assert "Where the time went" not in (dest / "results/report.md").read_text()  # the artifact stays deterministic


def test_no_change_reruns_nothing(project):
    dest, env, _ = project
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    assert ran_stages(output) == set()


def test_changing_one_method_reruns_only_its_students_and_the_aggregate(project):
    dest, env, _ = project
    model = dest / "artifacts/students/kd/seed0/model.pt"
    before = model.read_bytes()
    changed = copy.deepcopy(TINY_STUDY)
    changed["methods"]["kd"] = {"temperature": 2.0}
    (dest / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    assert ran_stages(output) == {"check_study", "train_student@kd-0", "evaluate@kd-0", "aggregate"}
    assert model.read_bytes() != before

    # reverting brings back the earlier artifacts from DVC's run-cache instead of retraining
    (dest / "params.yaml").write_text(yaml.safe_dump(TINY_STUDY, sort_keys=False))
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    assert "train_student@kd-0" not in ran_stages(output)
    assert model.read_bytes() == before


def test_editing_one_method_module_reruns_only_its_students(project):
    dest, env, _ = project
    module = dest / "kdlib/methods/kd.py"
    source = module.read_text()
    module.write_text(source + "\n# an edit\n")
    status = run([str(BIN / "dvc"), "status"], dest, env).stdout
    assert "check_study" in status and "train_teacher" not in status and "train_student@ce-0" not in status
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    ran = ran_stages(output)
    assert {"check_study", "train_student@kd-0"} <= ran <= {"check_study", "train_student@kd-0", "evaluate@kd-0", "aggregate"}
    module.write_text(source)
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    assert "train_student@kd-0" not in ran_stages(output)  # DVC's run-cache brings the earlier student back


def test_a_forced_teacher_rerun_writes_the_same_bytes(project):
    dest, env, _ = project
    run([str(BIN / "dvc"), "repro", "-f", "-s", "train_teacher"], dest, env)
    assert "up to date" in run([str(BIN / "dvc"), "status"], dest, env).stdout


def test_an_unknown_top_level_key_stops_before_any_stage_and_keeps_results(project):
    dest, env, _ = project
    params = dest / "params.yaml"
    good = params.read_text()
    results = {p: p.read_bytes() for p in (dest / "results").rglob("*") if p.is_file()}
    params.write_text(good + "optimiser: adam\n")
    try:
        first = subprocess.run([str(BIN / "python"), "-m", "tasks.check_study", "--validate-only"],
                               cwd=dest, env=env, capture_output=True, text=True)
        assert first.returncode == 2 and "optimiser: unknown key" in first.stderr
        assert "Traceback" not in first.stderr
        bare = subprocess.run([str(BIN / "dvc"), "repro"], cwd=dest, env=env, capture_output=True, text=True)
        assert bare.returncode != 0 and "optimiser: unknown key" in bare.stdout + bare.stderr
        assert ran_stages(bare.stdout) == {"check_study"}
        assert {p: p.read_bytes() for p in (dest / "results").rglob("*") if p.is_file()} == results
    finally:
        params.write_text(good)


def test_bad_params_stop_before_anything_runs(project, tmp_path):
    dest, env, _ = project
    bad = copy.deepcopy(TINY_STUDY)
    bad["students"]["schedule"]["epoch"] = 3
    params = tmp_path / "bad.yaml"
    params.write_text(yaml.safe_dump(bad))
    result = subprocess.run(
        [str(BIN / "python"), "-m", "tasks.prepare_data", "--params", str(params)],
        cwd=dest, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "students.schedule.epoch: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def damage(path, how: str) -> None:
    data = path.read_bytes()
    path.chmod(0o644)
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte altered in the middle, same size
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])


def test_damaged_artifacts_are_refused_by_a_single_stage_and_restored_by_repro(project):
    dest, env, _ = project
    logits = next((dest / "artifacts/logits").rglob("manifest.json")).parent
    logits_file = (logits / sorted(json.loads((logits / "manifest.json").read_text())["files"])[0]).relative_to(dest)
    damaged = {
        "artifacts/data/dataset.pt": "truncate",
        "artifacts/teacher/model.pt": "alter",
        logits_file.as_posix(): "alter",
        "artifacts/students/kd/seed0/model.pt": "truncate",
        "artifacts/evaluations/kd/seed0/metrics.json": "alter",
    }
    before = {name: (dest / name).read_bytes() for name in damaged}
    for name, how in damaged.items():
        damage(dest / name, how)

    # one stage alone (what `dvc repro -s train_teacher` runs) refuses its damaged input
    single = subprocess.run([str(BIN / "python"), "-m", "tasks.train_teacher"], cwd=dest, env=env,
                            capture_output=True, text=True)
    assert single.returncode == 2, single.stderr
    assert "artifacts/data/dataset.pt is missing or does not match its manifest hash" in single.stderr
    assert "run `dvc repro` (not -s)" in single.stderr and "Traceback" not in single.stderr
    assert (dest / "artifacts/teacher/model.pt").read_bytes() != before["artifacts/teacher/model.pt"]

    status = run([str(BIN / "dvc"), "status"], dest, env).stdout
    assert "modified" in status and "artifacts/data" in status

    # the same command again: DVC restores every damaged output from its cache or re-runs its stage
    run([str(BIN / "dvc"), "repro"], dest, env)
    for name in damaged:
        assert (dest / name).read_bytes() == before[name], name
    folders = [m.parent for m in (dest / "artifacts").rglob("manifest.json")]
    assert len(folders) >= 7 and all(artifacts.is_complete(p) for p in folders)
    assert ran_stages(run([str(BIN / "dvc"), "repro"], dest, env).stdout) == set()


NEW_METHOD = '''"""KD at T = 2 under its own name: the method a contributor adds (docs/contributing.md)."""
from pydantic import Field

from kdlib.losses import ce, kd
from kdlib.methods.base import Method, MethodSettings, register


class SoftKDSettings(MethodSettings):
    temperature: float = Field(2.0, gt=0)


@register
class SoftKD(Method):
    """CE + T^2 KL to the teacher at T = 2, equal weights."""

    name = "soft_kd"
    Settings = SoftKDSettings

    def forward_train(self, model, x, target, teacher, epoch):
        logits, _ = model(x)
        return logits, {"ce": ce.cross_entropy(logits, target), "kd": kd.kd_loss(logits, teacher, self.settings.temperature)}
'''


def test_a_new_method_module_and_its_entry_train_only_its_students(project):
    """docs/contributing.md's recipe: one module in kdlib/methods/, one params.yaml entry."""
    dest, env, _ = project
    (dest / "kdlib/methods/soft_kd.py").write_text(NEW_METHOD)
    study = copy.deepcopy(TINY_STUDY)
    study["students"]["methods"].append("soft_kd")
    study["methods"]["soft_kd"] = {"temperature": 3.0}
    (dest / "params.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    output = run([str(BIN / "dvc"), "repro"], dest, env).stdout
    assert ran_stages(output) == {"check_study", "train_student@soft_kd-0", "evaluate@soft_kd-0", "aggregate"}
    summary = json.loads((dest / "results/summary.json").read_text())
    assert {row["method"] for row in summary["methods"]} == {"ce", "kd", "soft_kd"}


def test_replacing_a_data_set_in_data_root_reruns_prepare_data(tmp_path):
    study = copy.deepcopy(TINY_STUDY)
    study["data"] = {"source": "cifar100", "path": "data/cifar-100-python.tar.gz", "md5_check": False}
    dest = tmp_path / "project"
    dest.mkdir()
    archive = write_tar(dest / "cifar100.tmp", cifar100_members())
    make_project(dest, study)
    archive.rename(dest / study["data"]["path"])
    env = project_env(dest)
    assert ran_stages(run([str(BIN / "dvc"), "repro", "prepare_data"], dest, env).stdout) == {"check_study", "prepare_data"}
    assert ran_stages(run([str(BIN / "dvc"), "repro", "prepare_data"], dest, env).stdout) == set()

    members = cifar100_members()
    members["cifar-100-python/train"] = members["cifar-100-python/train"].replace(b"img0.png", b"new0.png")
    write_tar(dest / study["data"]["path"], members)  # same path, other bytes (check_study depends on data/ too)
    assert ran_stages(run([str(BIN / "dvc"), "repro", "prepare_data"], dest, env).stdout) == {"check_study", "prepare_data"}


# The cache's extra tensors: kd++ and sparse_kd students train from a `dvc repro`, and changing
# `logits.topk` re-runs cache_logits and the students after it. (The Prefect key's dependence on
# `logits.topk` is in tests/logit_cache/test_sparse_topk.py.)
def test_dvc_trains_nd_and_sparse_students_and_topk_reruns_the_cache(tmp_path):
    study = copy.deepcopy(TINY_STUDY)
    study["students"]["methods"] = ["kd++", "sparse_kd"]
    study["students"]["schedule"]["epochs"] = 1
    study["methods"] = {"kd++": {}, "sparse_kd": {}}
    study["tracking"]["enabled"] = False
    dest = make_project(tmp_path / "project", study)
    env = project_env(dest)
    run([str(BIN / "dvc"), "repro"], dest, env, timeout=400)
    logits = artifacts.read_manifest(dest / "artifacts/logits/teacher")
    assert {"views.pt", "plain.pt", "features.pt", "sparse.pt"} <= set(logits["files"])
    assert logits["meta"]["topk"] == 3
    for method in ("kd++", "sparse_kd"):
        student = artifacts.read_manifest(dest / f"artifacts/students/{method}/seed0")
        assert "failed" not in student["meta"] and student["meta"]["method"] == method

    study["logits"]["topk"] = 5
    (dest / "params.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    output = run([str(BIN / "dvc"), "repro"], dest, env, timeout=400).stdout
    assert {"cache_logits", "train_student@kd++-0", "train_student@sparse_kd-0"} <= ran_stages(output)
    assert artifacts.read_manifest(dest / "artifacts/logits/teacher")["meta"]["topk"] == 5
