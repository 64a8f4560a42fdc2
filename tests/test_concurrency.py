"""Two real processes building the same artifact: one builds, the other waits and reuses it."""
import copy
import subprocess
import sys

import pytest
import yaml

from kdlib import artifacts

from tests.conftest import TINY_STUDY

pytestmark = pytest.mark.slow

SCRIPT = """
import sys
from kdlib.config import load_config
from tasks import cache_logits, prepare_data, train_student, train_teacher
cfg = load_config("params.yaml")
data = prepare_data.cached(cfg)
teacher = train_teacher.cached(cfg, data)
logits = cache_logits.cached(cfg, data, teacher)
print("START", flush=True)
manifest = train_student.cached(cfg, "kd", 0, data, logits)
print("DONE", manifest["dir"], flush=True)
"""


def test_two_processes_never_build_the_same_artifact_at_once(tmp_path):
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["schedule"]["epochs"] = 6
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "run.py").write_text(SCRIPT)
    # build the shared upstream artifacts first, so the race is on the student
    subprocess.run([sys.executable, "-c", SCRIPT.replace('"kd", 0', '"ce", 0')], cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)

    procs = [subprocess.Popen([sys.executable, "run.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    trained = [o for o in outputs if "kd seed 0 epoch 6/6" in o]
    reused = [o for o in outputs if "train_student: reusing" in o]
    assert len(trained) == 1 and len(reused) == 1, outputs
    assert "waiting for" in reused[0]
    dirs = {line.split()[1] for o in outputs for line in o.splitlines() if line.startswith("DONE")}
    assert len(dirs) == 1
    assert artifacts.is_complete(tmp_path / dirs.pop())
