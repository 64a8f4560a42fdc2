"""A shared study file cannot run code through DVC: names reach stage commands only once validated."""
import copy
import subprocess

from tests.helpers.project import BIN, make_project, project_env, ran_stages
from tests.helpers.study import TINY_STUDY


def test_a_method_name_with_shell_text_runs_nothing(tmp_path):
    study = copy.deepcopy(TINY_STUDY)
    study["students"]["methods"] = ["ce", "kd;touch pwned;#"]
    study["methods"] = {"ce": {}, "kd;touch pwned;#": {"method": "kd"}}
    dest = make_project(tmp_path / "p", study)
    result = subprocess.run([str(BIN / "dvc"), "repro"], cwd=dest, env=project_env(dest), capture_output=True, text=True)
    assert result.returncode != 0
    assert "students.methods: 'kd;touch pwned;#' is not a valid name" in result.stdout + result.stderr
    assert ran_stages(result.stdout) == {"check_study"}
    assert not list(dest.rglob("pwned")) and not (tmp_path / "pwned").exists()
    assert not (dest / "artifacts" / "data").exists()
