"""A training step's process imports only what it runs: no tracking, orchestration or plotting."""
import subprocess
import sys

import pytest

from tests.helpers.project import ROOT

HEAVY = {"mlflow", "prefect", "matplotlib", "scipy", "polars", "dvc", "triton"}


def imported_top_level(module: str) -> set[str]:
    """Top-level packages `python -X importtime -c 'import <module>'` reports (a fresh process)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("step", ["prepare_data", "train_teacher", "finetune_teacher", "cache_logits", "train_student", "evaluate"])
def test_a_step_process_imports_no_tracking_orchestration_or_plotting(step):
    names = imported_top_level(f"tasks.{step}")
    assert "torch" in names and "kdlib" in names  # the parse works: it sees what the step needs
    assert not names & HEAVY, sorted(names & HEAVY)
