"""bench/fused_linear_memory.py in --quick mode: it runs, measures both variants in fresh processes,
and writes the JSON fields the full run reports (so the benchmark cannot rot between full runs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "fused_linear_memory.py"


def test_quick_run_writes_medians_ratio_and_gradient_differences(tmp_path):
    out = tmp_path / "fused_linear_memory.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--reps", "1", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    settings = report["settings"]
    assert settings["quick"] is True and settings["reps"] == 1 and settings["vocab"] == 2048
    assert 1 <= settings["chunk_rows"] < settings["rows"]  # the budget really splits the rows
    assert report["machine"]["torch"] and report["machine"]["cpu_count"]
    for variant in ("eager", "chunked"):
        (run,) = report["raw"][variant]
        assert run["variant"] == variant and run["peak_extra_mib"] >= 0 and run["seconds"] > 0
        assert report["median_peak_extra_mib"][variant] == run["peak_extra_mib"]
    assert report["raw"]["eager"][0]["ran_eager_reference"] is False
    median = report["median_peak_extra_mib"]
    assert report["ratio_chunked_over_eager"] == median["chunked"] / median["eager"]
    assert report["target_met"] == (report["ratio_chunked_over_eager"] <= 0.2)
    assert report["chunked_ran_eager_reference"] == ("note" in report)
    # the chunked variant is the chunked PyTorch path, not a fall-through to eager
    assert settings["chunked_backend"] == "torch_chunked"
    assert report["chunked_ran_eager_reference"] is False and report["raw"]["chunked"][0]["ran_eager_reference"] is False
    assert report["n_chunks"] == -(-settings["rows"] // settings["chunk_rows"]) > 1
    assert report["chunk_logits_mib"] < report["logits_matrix_mib"]
    assert median["chunked"] < median["eager"]
    diffs = report["chunked_vs_eager"]
    assert set(diffs) == {"loss", "grad_student_hidden", "grad_student_weight"}
    for name, d in diffs.items():  # the values of eager, up to float32 summation order
        assert d["max_abs_eager"] > 0 and d["max_abs_diff"] <= 1e-4 * d["max_abs_eager"], name
        assert d["max_abs_diff_over_max_abs_eager"] == d["max_abs_diff"] / d["max_abs_eager"]
    assert "wrote" in proc.stdout and ("met" in proc.stdout) and "median seconds" in proc.stdout
