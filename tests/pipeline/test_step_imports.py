"""A training step's process imports only what it uses: a student's process in a fresh
interpreter with tracking off loads no MLflow, Prefect, matplotlib or scipy; with tracking on
it loads MLflow when its run starts (and what `import mlflow` itself loads: scipy), and still
no Prefect or matplotlib. A DVC stage's child of the fork server inherits the same set."""
import json
import subprocess
import sys

import pytest

from tests.helpers.study import TINY_STUDY

pytestmark = pytest.mark.slow

UPSTREAM = r"""
import json, sys
from pathlib import Path
from kdlib.config import parse_config
from tasks import cache_logits, prepare_data, train_teacher

cfg = parse_config(json.loads(sys.argv[1]))
root = Path(sys.argv[2])
data = prepare_data.run(cfg, root / "data")
teacher = train_teacher.run(cfg, data, root / "teacher")
logits = cache_logits.run(cfg, data, teacher, root / "logits")
(root / "upstream.json").write_text(json.dumps({"data": data, "logits": logits}))
"""

STUDENT = r"""
import json, sys
from pathlib import Path
from kdlib.config import parse_config
from tasks import train_student, tracking

top = lambda names: sorted({n.split(".")[0] for n in names})
imported = top(sys.modules)
cfg = parse_config(json.loads(sys.argv[1]))
root = Path(sys.argv[2])
upstream = json.loads((root / "upstream.json").read_text())
parent = tracking.start_parent(cfg, "dvc", {}, "dvc.yaml")
train_student.run(cfg, "kd", 0, upstream["data"], upstream["logits"], root / "student", parent)
tracking.finish_parent(cfg, parent)
print("MODULES" + json.dumps({"imported": imported, "ran": top(sys.modules)}))
"""

OPTIONAL = {"mlflow", "prefect", "matplotlib", "scipy"}


def python(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("imports")
    raw = json.loads(json.dumps(TINY_STUDY))
    raw["students"]["schedule"]["epochs"] = 1
    raw["runtime"]["store"] = str(root / "store")
    python(UPSTREAM, json.dumps(raw), str(root))
    return root, raw


@pytest.mark.parametrize("tracking", [False, True], ids=["tracking off", "tracking on"])
def test_a_student_process_imports_only_what_it_uses(upstream, tracking):
    root, raw = upstream
    raw = json.loads(json.dumps(raw))
    raw["tracking"].update(enabled=tracking, uri=f"sqlite:///{root}/mlflow-{tracking}.db")
    line = next(l for l in python(STUDENT, json.dumps(raw), str(root)).splitlines() if l.startswith("MODULES"))
    modules = json.loads(line[len("MODULES"):])
    assert not set(modules["imported"]) & OPTIONAL, modules["imported"]  # the step's modules import none of them
    expected = {"mlflow", "scipy"} if tracking else set()  # `import mlflow` imports scipy itself
    assert set(modules["ran"]) & OPTIONAL == expected, sorted(set(modules["ran"]) & OPTIONAL)


PRELOADED = r"""
import json, sys
from tasks import forkserver

forkserver.preload()
print("MODULES" + json.dumps(sorted({n.split(".")[0] for n in sys.modules})))
"""


@pytest.mark.parametrize("tracking", [False, True], ids=["tracking off", "tracking on"])
def test_a_forked_stage_inherits_only_what_it_would_import(tmp_path, tracking):
    """A DVC stage's step runs in a child of the fork server (tasks.forkserver), with every
    module the server imported: the training steps, and MLflow only for a tracked study."""
    raw = json.loads(json.dumps(TINY_STUDY))
    raw["tracking"]["enabled"] = tracking
    (tmp_path / "params.yaml").write_text(json.dumps(raw))
    out = subprocess.run([sys.executable, "-c", PRELOADED], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    modules = set(json.loads(next(l for l in out.stdout.splitlines() if l.startswith("MODULES"))[len("MODULES"):]))
    assert {"torch", "kdlib", "tasks"} <= modules
    expected = {"mlflow", "scipy"} if tracking else set()  # `import mlflow` imports scipy itself
    assert modules & OPTIONAL == expected, sorted(modules & OPTIONAL)
