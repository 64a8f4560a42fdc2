"""The layering rules of architecture.md, checked on the source."""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "kdlib").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_kdlib_never_imports_orchestration(path):
    assert not imported_modules(path) & {"prefect", "mlflow", "dvc", "tasks", "flows", "polars"}


@pytest.mark.parametrize("path", sorted((ROOT / "tasks").glob("*.py")), ids=lambda p: p.name)
def test_tasks_never_import_flows(path):
    assert "flows" not in imported_modules(path)


def study_deps(cfg) -> set[str]:
    """The `artifacts/study/...` files the stages of dvc.yaml depend on, interpolated for `cfg`."""
    files = set()
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        deps = [d for d in body.get("deps", []) if d.startswith("artifacts/study/")]
        if "foreach" in stage:
            keys = {"train_extra_teacher": cfg.teachers, "cache_extra_logits": cfg.teachers}.get(name, cfg.finetuned_teachers)
            files |= {d.replace("${key}", k) for d in deps for k in keys}
        elif "matrix" in stage:
            files |= {d.replace("${item.method}", m).replace("${item.seed}", str(seed))
                      for d in deps for m in cfg.students.methods for seed in cfg.students.seeds}
        else:
            files |= set(deps)
    return {f.removeprefix("artifacts/study/") for f in files}


def test_every_dvc_stage_reads_the_key_parts_check_study_writes():
    """A stage's DVC deps hold its key's config slice and code identity, the same parts its
    Prefect key hashes (`tasks.check_study`): every file a stage reads is written, and
    every step stage reads one."""
    from kdlib.config import parse_config
    from tasks import check_study, forkserver
    from tests.helpers.study import TINY_STUDY

    raw = dict(TINY_STUDY, teachers={"second": {"arch": "mlp", "seed": 1, "schedule": {"epochs": 1}}},
               finetuned_teachers={"tuned": {"lam": -0.5, "schedule": {"epochs": 1}}})
    cfg = parse_config(raw)
    written = set(check_study.stage_files(cfg))
    assert study_deps(cfg) == written
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        # every stage runs its step through the fork server's client (tasks.forkserver), a known step
        assert body["cmd"].startswith(".venv/bin/python -m tasks.forkserver "), name
        assert body["cmd"].split()[3] in forkserver.STEPS, name
        if name != "check_study":
            assert any(d.startswith("artifacts/study/") for d in body["deps"]), name
            assert not any(d.startswith(("kdlib", "tasks")) for d in body["deps"]), name
