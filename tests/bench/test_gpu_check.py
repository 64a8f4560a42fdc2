"""bench/gpu_check.py: its dry run writes every section, marked dry-run, with skipped items and their reasons;
its budget skips what does not fit."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
SECTIONS = ("cuda_tests", "kernels", "training", "concurrent_students")


def load_gpu_check():
    """bench/ is no package: the script, imported by path (it puts bench/ on sys.path for its own imports)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # its dataclasses look their module up there
        path = list(sys.path)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path[:] = path
    return sys.modules["gpu_check"]


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())

    assert report["dry_run"] is True
    for name in ("meta", "budget", *SECTIONS):
        assert report[name]["dry_run"] is True, name
    for name in SECTIONS:
        assert "error" not in report[name], report[name].get("traceback")
        assert report[name]["wall_s"] >= 0
        assert report["budget"]["sections"][name]["wall_s"] == report[name]["wall_s"]
    meta = report["meta"]
    assert meta["torch"] and meta["triton"] and meta["date"] and meta["device_name"]
    assert meta["peak_bandwidth_bytes_per_s"] == "unknown"
    assert report["budget"]["within_budget"] and report["wall_s"] < 180

    tests = report["cuda_tests"]
    assert tests["mode"] == "collect-only" and tests["returncode"] == 0 and tests["collected"] >= 1
    assert "--collect-only" in tests["command"]

    kernels = report["kernels"]["results"]
    assert kernels and all(row["dry_run"] is True for row in kernels)
    measured = {(row["kernel"], row["backend"], row["classes"]) for row in kernels if "ms" in row}
    assert ("kd_loss", "eager", 100) in measured and ("kd_loss", "compile", 1000) in measured
    assert {row["rows"] for row in kernels} == {64} and {row["dtype"] for row in kernels} == {"float32"}
    assert all(row["fraction_of_peak"] == "unknown" for row in kernels if "ms" in row)

    variants = report["training"]["variants"]
    assert {"mdistiller_fp32", "kdflow_cache_fp32", "kdflow_live_fp32"} <= set(variants)
    assert all(v["dry_run"] is True and v["images_per_s"] > 0 for v in variants.values())

    runs = report["concurrent_students"]["runs"]
    assert [r["students"] for r in runs] == [1, 2]
    assert all(r["dry_run"] is True and r["students_per_hour"] > 0 and "speedup_over_1" in r for r in runs)

    skipped = report["budget"]["skipped"]
    assert skipped and all(s["section"] in SECTIONS and s["item"] and s["reason"] for s in skipped)
    items = " ".join(s["item"] for s in skipped)
    assert "triton" in items and "compile" in items  # no Triton timing and no compiled student on CPU
    for name in SECTIONS:
        assert report[name]["skipped_items"] == [s for s in skipped if s["section"] == name]


def test_budget_skips_what_does_not_fit():
    gpu_check = load_gpu_check()
    now = [0.0]
    budget = gpu_check.Budget(100.0, 10.0, {"a": 1.0, "b": 1.0}, {"work": 30.0}, clock=lambda: now[0])
    assert budget.open("a") == pytest.approx(45.0)  # its share of the 90 s left
    assert budget.fits("first", "work")  # the prior guess, 30 s, fits 45 s
    now[0] = 20.0
    budget.record("work", 1.0, 20.0)
    assert budget.fits("same size", "work")  # 20 s of the 25 s left
    assert not budget.fits("twice the size", "work", 2.0)  # 40 s estimated
    assert budget.skipped[-1]["item"] == "twice the size" and "estimated 40.0 s" in budget.skipped[-1]["reason"]
    budget.close()
    assert budget.open("b") == pytest.approx(70.0)  # the unused time passes on
    report = budget.report()
    assert report["sections"]["a"] == {"allowance_s": 45.0, "wall_s": 20.0} and report["within_budget"]


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 3.35e12), ("NVIDIA H100 PCIe", 2.0e12), ("NVIDIA H200", 4.8e12),
    ("NVIDIA H100 NVL", None), ("NVIDIA A100-SXM4-80GB", None),
])
def test_peak_bandwidth_from_the_device_name(name, peak):
    assert load_gpu_check().peak_bandwidth(name) == peak


def test_kernel_rows_give_the_fraction_of_peak_and_the_speed_ups():
    gpu_check = load_gpu_check()
    shape = {"kernel": "kd_loss", "dtype": "bfloat16", "rows": 8192, "classes": 128256}
    rows = [gpu_check.kernel_row(dict(shape, backend=backend, ms=ms, gb_per_s=gb, peak_extra_mib=1.0), 3.35e12, False, 1.0)
            for backend, ms, gb in (("triton", 2.0, 1675.0), ("eager", 6.0, 558.3), ("compile", 3.0, 1116.7))]
    assert rows[0]["fraction_of_peak"] == 0.5 and rows[0]["dry_run"] is False
    assert gpu_check.kernel_row(dict(shape, backend="eager", ms=1.0, gb_per_s=1.0), None, True, 1.0)["fraction_of_peak"] == "unknown"
    (summary,) = gpu_check.kernel_summary(rows)
    assert summary["triton_speedup_over_eager"] == 3.0 and summary["triton_speedup_over_compile"] == 1.5
    assert summary["triton_fraction_of_peak"] == 0.5


def test_pytest_counts_read_the_summary_and_the_modules_that_failed_to_import():
    output = """E   ModuleNotFoundError: No module named 'prefect'
=========================== short test summary info ============================
ERROR tests/pipeline/test_deployments.py
3 passed, 1510 deselected, 1 error in 9.10s"""
    counts = load_gpu_check().pytest_counts(output)
    assert (counts["passed"], counts["deselected"], counts["errors"], counts["collection_errors"]) == (3, 1510, 1, 1)
    assert counts["missing_modules"] == ["prefect"]
    assert load_gpu_check().pytest_counts("3/1504 tests collected (1501 deselected) in 2.44s")["collected"] == 3
