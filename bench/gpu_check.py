"""One-shot GPU check: the CUDA tests, the loss kernels, student throughput and concurrent students, in one JSON.

Made for a GPU machine lent for a few minutes: one command, at most `--budget-s` seconds
(default 480: 8 minutes on one H100/H200), one JSON file:

* ``cuda_tests``: ``pytest -m cuda`` in a subprocess (pass/fail/skip counts, duration, the
  output's tail);
* ``kernels``: the loss kernels (Triton) against eager PyTorch and ``torch.compile`` at
  8192 rows x {100, 1000, 32000, 128256} classes in bf16 and fp32, measured by
  ``bench/kernels.py``'s functions: median ms, bytes/s and its fraction of the device's
  peak bandwidth, peak extra memory. Triton and eager first over the whole grid (largest
  shapes first), then ``torch.compile`` (tens of seconds of compilation per shape) in the
  same order as far as the budget goes;
* ``training``: resnet32x4 -> resnet8x4 KD student images/s on CIFAR-100-shaped data with
  ``bench/pipeline.py``'s functions: from the logit cache and against a live teacher (each
  in fp32, bf16 + channels_last, and bf16 + channels_last + torch.compile; ``kdlib.train.Speed``)
  and the mdistiller loop (DataLoader, live teacher, fp32, eager losses);
* ``concurrent_students``: 1, 2, 4 and 8 processes started together on the one device, each
  training one student for a fixed number of steps from a shared logit cache: wall time,
  students per hour and the speed-up over one;
* ``budget``: each section's allowance (a share of what is left when it starts, so time a
  section does not use passes on) and wall time, and every item skipped, with why: items are
  skipped when their estimated cost (the slowest of the last items of the same kind, scaled
  up for bigger shapes; a prior guess for the first) does not fit what is left;
* ``meta``: device, versions, date, git commit.

The JSON goes to ``$OUT/gpu_check.json`` when ``OUT`` is set, else to
``bench/results/gpu_check_<device>.json`` (or ``--out``); it is rewritten after every section,
so a run cut short keeps what it measured.

``--dry-run`` runs the same code paths on the CPU at tiny sizes (rows 64, classes 100 and 1000,
fp32, the PyTorch backends; a few training steps on 8x8 images; 1 and 2 concurrent students;
``pytest -m cuda --collect-only``) in under 3 minutes; every section and value says
``"dry_run": true``, and none of its numbers says anything about a GPU.

    .venv/bin/python bench/gpu_check.py              # on the GPU machine (make gpu-check)
    .venv/bin/python bench/gpu_check.py --dry-run    # anywhere, < 3 minutes
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (ROOT, BENCH):  # kdlib without an install (a GPU machine's python), bench/ when imported by a test
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import kernels as kernel_bench  # noqa: E402  bench/kernels.py
import pipeline as pipeline_bench  # noqa: E402  bench/pipeline.py

from kdlib import artifacts  # noqa: E402
from kdlib.config import AugmentConfig, ScheduleConfig  # noqa: E402
from kdlib.logit_cache import LogitCache, compute_cache, teacher_view_logits, write_cache  # noqa: E402
from kdlib.methods.base import build_method, validate_method_entry  # noqa: E402
from kdlib.models import build_model  # noqa: E402
from kdlib.train import Speed, fit  # noqa: E402

RESULTS = BENCH / "results"
SECTIONS = ("cuda_tests", "kernels", "training", "concurrent_students")
SHARES = {"cuda_tests": 0.15, "kernels": 0.42, "training": 0.25, "concurrent_students": 0.18}
"""Each section's share of the time left when it starts (divided by the shares of the sections still to run)."""
PEAK_BANDWIDTH = (  # (name contains all of these, bytes/s); first match wins
    (("H200",), 4.8e12),
    (("H100", "PCIE"), 2.0e12),
    (("H100", "NVL"), None),
    (("H100", "SXM"), 3.35e12),
    (("H100", "HBM3"), 3.35e12),  # the SXM board calls itself "NVIDIA H100 80GB HBM3"
)
WORKER_TAG = "GPU_CHECK_WORKER "


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU check's, or the dry run's tiny ones."""

    dry_run: bool
    budget_s: float
    reserve_s: float  # kept free for writing the JSON and tearing down
    rows: tuple[int, ...]
    classes: tuple[int, ...]  # largest first: the targets are at C >= 32000
    dtypes: tuple[str, ...]
    warmup: int
    repeat: int
    image_size: int
    batch_size: int
    train_steps: int
    train_repeats: int
    loader_workers: int  # the mdistiller loop's DataLoader workers (mdistiller's default: 2)
    students: tuple[int, ...]
    student_steps: int
    priors: dict[str, float] = field(default_factory=dict)  # first guesses (s) before anything of a kind ran

    @classmethod
    def gpu(cls, budget_s: float) -> "Plan":
        return cls(
            dry_run=False, budget_s=budget_s, reserve_s=10.0, rows=(8192,), classes=(128256, 32000, 1000, 100),
            dtypes=("bfloat16", "float32"), warmup=2, repeat=10, image_size=32, batch_size=64, train_steps=200,
            train_repeats=3, loader_workers=2, students=(1, 2, 4, 8), student_steps=400,
            priors={"cuda_tests": 60, "kernels:triton": 8, "kernels:eager": 5, "kernels:liger": 8, "kernels:compile": 40,
                    "training:plain": 25, "training:compile": 90, "concurrent_students": 25},
        )

    @classmethod
    def dry(cls, budget_s: float) -> "Plan":
        return cls(
            dry_run=True, budget_s=budget_s, reserve_s=5.0, rows=(64,), classes=(1000, 100), dtypes=("float32",),
            warmup=1, repeat=3, image_size=8, batch_size=16, train_steps=3, train_repeats=1, loader_workers=0,
            students=(1, 2), student_steps=3,
            priors={"cuda_tests": 15, "kernels:eager": 1, "kernels:compile": 20, "training:plain": 10,
                    "concurrent_students": 20},
        )


class Budget:
    """Elapsed time against the budget: section allowances, cost estimates, skipped items."""

    def __init__(self, total_s: float, reserve_s: float, shares: dict[str, float], priors: dict[str, float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s, self.reserve_s, self.shares, self.priors, self.clock = total_s, reserve_s, shares, priors, clock
        self.started = clock()
        self.history: dict[str, list[tuple[float, float]]] = {}
        self.sections: dict[str, dict[str, float]] = {}
        self.skipped: list[dict[str, Any]] = []
        self.section = ""
        self.section_started = self.deadline = self.started

    def elapsed(self) -> float:
        return self.clock() - self.started

    def open(self, name: str) -> float:
        """Start section `name`; its allowance is its share of what is left (the budget less the reserve)."""
        left = self.total_s - self.reserve_s - self.elapsed()
        names = list(self.shares)
        still = sum(self.shares[s] for s in names[names.index(name):])
        allowance = max(0.0, left * self.shares[name] / still)
        self.section, self.section_started = name, self.clock()
        self.deadline = self.section_started + allowance
        self.sections[name] = {"allowance_s": round(allowance, 1)}
        return allowance

    def close(self) -> float:
        wall = self.clock() - self.section_started
        self.sections[self.section]["wall_s"] = round(wall, 2)
        return wall

    def left(self) -> float:
        """Seconds left in the open section."""
        return self.deadline - self.clock()

    def estimate(self, kind: str, size: float = 1.0) -> tuple[float, str]:
        """(seconds, basis): the slowest of the last 3 items of `kind`, scaled up linearly when
        `size` is bigger than theirs; the prior guess when none ran yet."""
        seen = self.history.get(kind, [])[-3:]
        if not seen:
            return float(self.priors.get(kind, 0.0)), "prior guess"
        est = max(seconds * max(1.0, size / max(done, 1e-9)) for done, seconds in seen)
        return est, f"slowest of the last {len(seen)} {kind} item(s)"

    def record(self, kind: str, size: float, seconds: float) -> None:
        self.history.setdefault(kind, []).append((size, seconds))

    def fits(self, item: str, kind: str, size: float = 1.0) -> bool:
        """Whether `item` fits what is left of the section; if not, it is recorded as skipped."""
        est, basis = self.estimate(kind, size)
        left = self.left()
        if est <= left:
            return True
        self.skip(item, f"estimated {est:.1f} s ({basis}), {max(left, 0.0):.1f} s left of the section's "
                        f"{self.sections[self.section]['allowance_s']:.1f} s", estimate_s=round(est, 1))
        return False

    def skip(self, item: str, reason: str, **extra: Any) -> None:
        self.skipped.append({"section": self.section, "item": item, "reason": reason, **extra})

    def report(self) -> dict[str, Any]:
        return {
            "budget_s": self.total_s, "reserve_s": self.reserve_s, "elapsed_s": round(self.elapsed(), 1),
            "within_budget": self.elapsed() <= self.total_s, "shares": self.shares, "priors_s": self.priors,
            "sections": self.sections, "skipped": self.skipped,
        }


def peak_bandwidth(device_name: str) -> float | None:
    """HBM peak bytes/s from the device's name; None ("unknown") for anything not listed."""
    name = device_name.upper()
    for words, peak in PEAK_BANDWIDTH:
        if all(w in name for w in words):
            return peak
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def meta(device: torch.device, plan: Plan) -> dict[str, Any]:
    name = device_name(device)
    peak = peak_bandwidth(name) if device.type == "cuda" else None
    out = {
        "dry_run": plan.dry_run,
        "device": device.type,
        "device_name": name,
        "peak_bandwidth_bytes_per_s": peak if peak is not None else "unknown",
        "torch": torch.__version__,
        "triton": version("triton"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD") or os.environ.get("GIT_COMMIT"),  # a copied tree has no .git
        "git_dirty": None if (status := git("status", "--porcelain", "--untracked-files=no")) is None else bool(status),
        "plan": asdict(plan),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                   capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count)
    return out


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- #
# sections
# --------------------------------------------------------------------------- #


def pytest_counts(output: str) -> dict[str, Any]:
    """Counts from pytest's summary line ("3 passed, 1 skipped, 1501 deselected in 9.1s", "3/1504 tests collected"),
    the test modules that failed to import (`collection_errors`, in `errors` too) and the modules they missed."""
    counts: dict[str, Any] = {k: 0 for k in ("passed", "failed", "skipped", "errors", "deselected", "xfailed",
                                             "xpassed", "collected")}
    tail = "\n".join(output.strip().splitlines()[-3:])
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b", tail):
        counts["errors" if word.startswith("error") else word] += int(number)
    if m := re.search(r"(\d+)(?:/\d+)? tests? collected", tail):
        counts["collected"] = int(m.group(1))
    counts["collection_errors"] = len(re.findall(r"^ERROR [^\s:]+\.py\s*$", output, flags=re.M))
    counts["missing_modules"] = sorted(set(re.findall(r"No module named '([^']+)'", output)))
    return counts


def cuda_tests_section(budget: Budget, plan: Plan, device: torch.device) -> dict[str, Any]:
    """Every `cuda`-marked test in a subprocess; the dry run only collects them."""
    # a test module that cannot be imported here (a GPU machine without prefect, say) must not stop the cuda tests
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors"]
    if plan.dry_run:
        command.append("--collect-only")
    out: dict[str, Any] = {"dry_run": plan.dry_run, "mode": "collect-only" if plan.dry_run else "run",
                           "command": " ".join(["python", *command[1:]])}
    if not budget.fits("pytest -m cuda", "cuda_tests"):
        out["skipped"] = True
        return out
    timeout = max(budget.left(), 1.0)
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        output, returncode = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        output = ((err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""))
        returncode = None
        out["error"] = f"timed out after {timeout:.0f} s (the section's allowance)"
    duration = time.perf_counter() - started
    budget.record("cuda_tests", 1.0, duration)
    out.update(pytest_counts(output), returncode=returncode, duration_s=round(duration, 2), output_tail=output[-3000:])
    if not plan.dry_run and device.type == "cuda":
        out["ok"] = out["failed"] == 0 and out["errors"] == out["collection_errors"] and out["passed"] > 0
    return out


def kernel_row(row: dict[str, Any], peak: float | None, dry_run: bool, seconds: float) -> dict[str, Any]:
    row = dict(row, dry_run=dry_run, item_seconds=round(seconds, 2))
    if "gb_per_s" in row:
        row["bytes_per_s"] = row["gb_per_s"] * 1e9
        row["fraction_of_peak"] = round(row["bytes_per_s"] / peak, 4) if peak else "unknown"
    return row


def kernels_section(budget: Budget, plan: Plan, device: torch.device) -> dict[str, Any]:
    """bench/kernels.py's measurements, item by item under the budget: non-compile backends over
    the whole grid first, then torch.compile, both in priority order (largest shapes, bf16 first)."""
    peak = peak_bandwidth(device_name(device)) if device.type == "cuda" else None
    shapes = [(dtype, n, c) for c in plan.classes for dtype in plan.dtypes for n in plan.rows]
    results: list[dict[str, Any]] = []
    out: dict[str, Any] = {
        "dry_run": plan.dry_run, "kernels": kernel_bench.KERNELS, "rows": list(plan.rows), "classes": list(plan.classes),
        "dtypes": list(plan.dtypes), "warmup": plan.warmup, "repeat": plan.repeat,
        "temperature": kernel_bench.TEMPERATURE, "sparse_topk": kernel_bench.TOPK,
        "fused_linear_hidden": kernel_bench.hidden_size(device),
        "peak_bandwidth_bytes_per_s": peak if peak is not None else "unknown",
        "min_bytes": "read student and teacher logits once and write the student gradient once (bench/kernels.py)",
        "results": results,
    }
    if device.type != "cuda":
        budget.skip("triton backend (every kernel)", "the Triton kernels need CUDA; their CPU interpreter is for "
                    "correctness (tests/kernels), not speed")
    if plan.dry_run:
        budget.skip("bfloat16, rows 8192, classes 32000 and 128256", "dry run: tiny sizes, fp32 only")
    passes = (("first pass", lambda b: b != "compile"), ("compile pass", lambda b: b == "compile"))
    for _, wanted in passes:
        for dtype_name, n, c in shapes:
            dtype = getattr(torch, dtype_name)
            for name in kernel_bench.KERNELS:
                if name == "dkd_loss" and c < 2:
                    continue
                size = n * c * dtype.itemsize
                # torch.compile's cost is its compilation, whatever the shape: its estimate is not scaled
                sizes = {b: 1.0 if b == "compile" else size for b in kernel_bench.backends_for(name, device) if wanted(b)}
                backends = [b for b in sizes if budget.fits(f"{name} {b} {dtype_name} {n}x{c}", f"kernels:{b}", sizes[b])]
                if not backends:
                    continue
                try:
                    inputs = kernel_bench.make_inputs(name, n, c, dtype, device)
                except torch.OutOfMemoryError:
                    results.append({"kernel": name, "dtype": dtype_name, "rows": n, "classes": c, "dry_run": plan.dry_run,
                                    "error": "out of memory building the inputs"})
                    free_memory(device)
                    continue
                for backend in backends:
                    started = time.perf_counter()
                    try:
                        row = kernel_bench.measure_backend(name, backend, n, c, dtype, inputs, device, plan.warmup,
                                                           plan.repeat)
                    except Exception as err:  # a kernel that fails to compile or run is a result, not the end
                        row = {"kernel": name, "backend": backend, "dtype": dtype_name, "rows": n, "classes": c,
                               "error": f"{type(err).__name__}: {str(err)[:500]}"}
                        print(f"{name} {backend} {dtype_name} {n}x{c}: {row['error']}", flush=True)
                    seconds = time.perf_counter() - started
                    budget.record(f"kernels:{backend}", sizes[backend], seconds)
                    results.append(kernel_row(row, peak, plan.dry_run, seconds))
                del inputs
                free_memory(device)
    out["summary"] = kernel_summary(results)
    return out


def kernel_summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kernel, dtype and shape: the Triton kernel's speed-up over eager and over torch.compile."""
    by_shape: dict[tuple, dict[str, dict]] = {}
    for row in results:
        if "ms" in row:
            by_shape.setdefault((row["kernel"], row["dtype"], row["rows"], row["classes"]), {})[row["backend"]] = row
    summary = []
    for (name, dtype, n, c), rows in by_shape.items():
        entry: dict[str, Any] = {"kernel": name, "dtype": dtype, "rows": n, "classes": c,
                                 "dry_run": next(iter(rows.values()))["dry_run"]}
        for backend, row in rows.items():
            entry[f"{backend}_ms"] = row["ms"]
            entry[f"{backend}_peak_extra_mib"] = row.get("peak_extra_mib")
        if "triton" in rows:
            entry["triton_fraction_of_peak"] = rows["triton"].get("fraction_of_peak")
            for base in ("eager", "compile", "liger"):
                if base in rows:
                    entry[f"triton_speedup_over_{base}"] = round(rows[base]["ms"] / rows["triton"]["ms"], 3)
        summary.append(entry)
    return summary


SPEEDS = {
    "fp32": Speed(),
    "bf16_channels_last": Speed(channels_last=True, bf16=True),
    "bf16_channels_last_compile": Speed(channels_last=True, bf16=True, compile=True),
}


def training_section(budget: Budget, plan: Plan, device: torch.device) -> dict[str, Any]:
    """Student images/s (bench/pipeline.py's data, teacher and mdistiller loop; kdlib.train.fit)."""
    teacher_name, student_name, classes = pipeline_bench.TEACHER, pipeline_bench.STUDENT, pipeline_bench.CLASSES
    batch, steps = plan.batch_size, plan.train_steps
    ds = pipeline_bench.random_cifar100(steps * batch, size=plan.image_size)
    aug = AugmentConfig(padding=pipeline_bench.PADDING, flip=True, seed=0)
    schedule = ScheduleConfig(epochs=1, batch_size=batch, lr=0.05)
    method = build_method("kd", validate_method_entry("kd", None))
    method.use_kernels("auto", device)
    eager_method = build_method("kd", validate_method_entry("kd", None))  # mdistiller: eager PyTorch losses
    eager_method.use_kernels("torch", device)
    torch.manual_seed(0)
    teacher = build_model(teacher_name, classes).to(device).eval()
    variants_out: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {
        "dry_run": plan.dry_run, "teacher": teacher_name, "student": student_name, "method": "kd", "classes": classes,
        "image_size": plan.image_size, "batch_size": batch, "steps": steps, "repeats": plan.train_repeats,
        "dataloader_workers": plan.loader_workers, "speeds": {k: asdict(v) for k, v in SPEEDS.items()},
        "losses": "kdlib kernels (runtime.kernels: auto) for the kdflow variants; eager PyTorch for mdistiller",
        "live_teacher": "fp32 (teacher_view_logits runs outside fit's autocast)",
        "variants": variants_out,
    }

    def student() -> torch.nn.Module:
        torch.manual_seed(1)
        return build_model(student_name, classes)

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        meta_ = write_cache(Path(tmp), compute_cache(teacher, ds, aug, epochs=1, log=lambda _: None))
        out["cache_build_s"] = round(time.perf_counter() - started, 3)
        artifacts.write_manifest(Path(tmp), "cache_logits", "gpu_check", meta_)
        cached_views = LogitCache(Path(tmp)).views

        def live_views(epoch: int, idx: torch.Tensor) -> torch.Tensor:
            return teacher_view_logits(teacher, ds, aug, epoch, idx)

        def run_fit(views: Callable, speed: Speed) -> Callable[[], None]:
            def go() -> None:
                teacher.to(memory_format=torch.channels_last if speed.channels_last else torch.contiguous_format)
                fit(student(), method, ds, schedule, 0, aug, teacher_views=views, device=device, log=lambda _: None,
                    speed=speed)
            return go

        loader = pipeline_bench.mdistiller_loader(ds, batch, plan.loader_workers)

        def run_mdistiller() -> None:
            teacher.to(memory_format=torch.contiguous_format)
            pipeline_bench.mdistiller_train(student().to(device), teacher, eager_method, loader, 0.05, device)

        # priority order: the baseline, kdflow's study path, the live teacher, then the compiled ones
        variants: list[tuple[str, Callable[[], None], Speed]] = [("mdistiller_fp32", run_mdistiller, SPEEDS["fp32"])]
        for speed_name in SPEEDS:
            if "compile" not in speed_name:
                variants += [(f"kdflow_cache_{speed_name}", run_fit(cached_views, SPEEDS[speed_name]), SPEEDS[speed_name]),
                             (f"kdflow_live_{speed_name}", run_fit(live_views, SPEEDS[speed_name]), SPEEDS[speed_name])]
        compiled = "bf16_channels_last_compile"
        variants += [(f"kdflow_cache_{compiled}", run_fit(cached_views, SPEEDS[compiled]), SPEEDS[compiled]),
                     (f"kdflow_live_{compiled}", run_fit(live_views, SPEEDS[compiled]), SPEEDS[compiled])]
        for name, fn, speed in variants:
            kind = "training:compile" if speed.compile else "training:plain"
            if speed.compile and device.type != "cuda":
                budget.skip(name, "torch.compile of the student on CPU: minutes of inductor C++ compilation "
                                  "(Speed.for_device refuses it there); measured on the GPU only")
                continue
            if not budget.fits(name, kind):
                continue
            started = time.perf_counter()
            try:
                first = pipeline_bench.timed(fn)  # warm-up: cuDNN autotuning, Triton JIT, torch.compile
                seconds = [pipeline_bench.timed(fn) for _ in range(plan.train_repeats)]
            except Exception as err:
                variants_out[name] = {"dry_run": plan.dry_run, "error": f"{type(err).__name__}: {str(err)[:500]}"}
                print(f"training {name}: {variants_out[name]['error']}", flush=True)
            else:
                median = statistics.median(seconds)
                variants_out[name] = {
                    "dry_run": plan.dry_run, "speed": asdict(speed), "first_run_s": round(first, 3),
                    "seconds": [round(s, 4) for s in seconds], "median_s": round(median, 4),
                    "steps_per_s": round(steps / median, 3), "images_per_s": round(steps * batch / median, 1),
                }
                print(f"training {name}: {variants_out[name]['images_per_s']} images/s (first run {first:.1f} s)",
                      flush=True)
            budget.record(kind, 1.0, time.perf_counter() - started)
    out["ratios"] = training_ratios(variants_out, plan.dry_run)
    return out


def training_ratios(variants: dict[str, dict[str, Any]], dry_run: bool) -> dict[str, Any]:
    rate = {k: v["images_per_s"] for k, v in variants.items() if "images_per_s" in v}
    ratios: dict[str, Any] = {"dry_run": dry_run}
    for speed_name in SPEEDS:
        cache, live = rate.get(f"kdflow_cache_{speed_name}"), rate.get(f"kdflow_live_{speed_name}")
        if cache and live:
            ratios[f"cache_over_live_{speed_name}"] = round(cache / live, 3)
        if cache and rate.get("mdistiller_fp32"):
            ratios[f"cache_{speed_name}_over_mdistiller"] = round(cache / rate["mdistiller_fp32"], 3)
    kdflow = {k: v for k, v in rate.items() if k.startswith("kdflow_cache_")}
    if kdflow and rate.get("mdistiller_fp32"):
        best = max(kdflow, key=kdflow.get)
        ratios["best_cache_over_mdistiller"] = {"variant": best, "ratio": round(kdflow[best] / rate["mdistiller_fp32"], 3)}
    return ratios


def concurrent_section(budget: Budget, plan: Plan, device: torch.device) -> dict[str, Any]:
    """N processes started together, each training one student from one shared logit cache."""
    steps, batch = plan.student_steps, plan.batch_size
    ds = pipeline_bench.random_cifar100(steps * batch, size=plan.image_size)
    aug = AugmentConfig(padding=pipeline_bench.PADDING, flip=True, seed=0)
    runs: list[dict[str, Any]] = []
    out: dict[str, Any] = {
        "dry_run": plan.dry_run, "teacher": pipeline_bench.TEACHER, "student": pipeline_bench.STUDENT, "method": "kd",
        "steps_per_student": steps, "batch_size": batch, "image_size": plan.image_size,
        "speed": asdict(Speed.for_device(device)),
        "definitions": {
            "students_per_hour": "N x 3600 / wall time from starting the N processes to the last one's exit "
                                 "(process start, imports and device setup included)",
            "students_per_hour_training": "N x 3600 / (last training end - first training start): setup left out",
            "start_to_train_s": "per student, from starting the processes to its training's start (imports, data, cache)",
            "setup_s": "per student, its data, cache and model setup after the imports",
            "images_per_s": "all students' images / wall time",
        },
        "runs": runs,
    }
    torch.manual_seed(0)
    teacher = build_model(pipeline_bench.TEACHER, pipeline_bench.CLASSES).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        meta_ = write_cache(Path(tmp), compute_cache(teacher, ds, aug, epochs=1, log=lambda _: None))
        artifacts.write_manifest(Path(tmp), "cache_logits", "gpu_check", meta_)
        out["cache_build_s"] = round(time.perf_counter() - started, 3)
        del teacher
        free_memory(device)
        threads = 1 if device.type != "cuda" else None
        for n in plan.students:
            if not budget.fits(f"{n} concurrent students", "concurrent_students", float(n)):
                continue
            run = run_students(n, Path(tmp), plan, device, threads or max(1, (os.cpu_count() or 1) // n),
                               timeout=max(budget.left(), 1.0))
            budget.record("concurrent_students", float(n), run["wall_s"])
            runs.append(run)
            print(f"{n} concurrent students: {run.get('students_per_hour')} students/h"
                  + (f" ({run['error']})" if "error" in run else ""), flush=True)
    one = next((r for r in runs if r["students"] == 1 and "students_per_hour" in r), None)
    for run in runs:
        if one and "students_per_hour" in run:
            run["speedup_over_1"] = round(run["students_per_hour"] / one["students_per_hour"], 3)
            if run.get("students_per_hour_training") and one.get("students_per_hour_training"):
                run["speedup_over_1_training"] = round(run["students_per_hour_training"] / one["students_per_hour_training"], 3)
    return out


def run_students(n: int, cache: Path, plan: Plan, device: torch.device, threads: int, timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--student-worker", "--cache", str(cache),
               "--steps", str(plan.student_steps), "--batch-size", str(plan.batch_size),
               "--image-size", str(plan.image_size), "--device", device.type, "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    started, spawned_at = time.perf_counter(), time.time()
    procs = [subprocess.Popen([*command, "--seed", str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(n)]
    outputs, error = [], None
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(timeout - (time.perf_counter() - started), 1.0))[0])
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s (what was left of the section)"
            for p in procs:
                p.kill()
            outputs.append(proc.communicate()[0])
    wall = time.perf_counter() - started
    run: dict[str, Any] = {"dry_run": plan.dry_run, "students": n, "wall_s": round(wall, 3), "threads_per_student": threads}
    workers = []
    for proc, text in zip(procs, outputs):
        lines = [line for line in text.splitlines() if line.startswith(WORKER_TAG)]
        if proc.returncode == 0 and lines:
            workers.append(json.loads(lines[-1][len(WORKER_TAG):]))
        else:
            error = error or f"a student exited with {proc.returncode}: {text[-1500:]}"
    if error:
        run["error"] = error
        return run
    window = max(w["train_end"] for w in workers) - min(w["train_start"] for w in workers)
    run.update(
        students_per_hour=round(n * 3600 / wall, 1),
        students_per_hour_training=round(n * 3600 / window, 1) if window > 0 else None,
        training_window_s=round(window, 3),
        images_per_s=round(n * plan.student_steps * plan.batch_size / wall, 1),
        start_to_train_s=[round(w["train_start"] - spawned_at, 3) for w in workers],
        setup_s=[round(w["setup_s"], 3) for w in workers],
        train_s=[round(w["train_s"], 3) for w in workers],
    )
    return run


def student_worker(args: argparse.Namespace) -> None:
    """One concurrent student: the data and the cache the parent built, `fit` for `--steps` steps."""
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds = pipeline_bench.random_cifar100(args.steps * args.batch_size, size=args.image_size)
    aug = AugmentConfig(padding=pipeline_bench.PADDING, flip=True, seed=0)
    schedule = ScheduleConfig(epochs=1, batch_size=args.batch_size, lr=0.05)
    method = build_method("kd", validate_method_entry("kd", None))
    method.use_kernels("auto", device)
    views = LogitCache(args.cache).views
    torch.manual_seed(args.seed)
    model = build_model(pipeline_bench.STUDENT, pipeline_bench.CLASSES)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA context before the clock starts
    setup = time.perf_counter() - started
    train_start = time.time()
    t0 = time.perf_counter()
    fit(model, method, ds, schedule, args.seed, aug, teacher_views=views, device=device, log=lambda _: None,
        speed=Speed.for_device(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    print(WORKER_TAG + json.dumps({"setup_s": setup, "train_s": train_s, "train_start": train_start,
                                   "train_end": train_start + train_s}), flush=True)


# --------------------------------------------------------------------------- #


def output_path(args: argparse.Namespace, device: torch.device) -> Path:
    if args.out:
        return args.out
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return RESULTS / f"gpu_check_{device.type}.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, the same code paths (< 3 minutes)")
    parser.add_argument("--budget-s", type=float, help="seconds for the whole check (default 480; dry run 150)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--out", type=Path, help="JSON path (default $OUT/gpu_check.json, else bench/results/gpu_check_<device>.json)")
    parser.add_argument("--student-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.student_worker:
        student_worker(args)
        return

    if args.dry_run:
        device = torch.device("cpu")
        plan = Plan.dry(args.budget_s or 150.0)
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device here; run it on the GPU machine, or use --dry-run")
        device = torch.device("cuda")
        plan = Plan.gpu(args.budget_s or 480.0)
    budget = Budget(plan.budget_s, plan.reserve_s, {s: SHARES[s] for s in args.sections}, plan.priors)
    out = output_path(args, device)
    report: dict[str, Any] = {"dry_run": plan.dry_run, "meta": meta(device, plan)}
    runners = {"cuda_tests": cuda_tests_section, "kernels": kernels_section, "training": training_section,
               "concurrent_students": concurrent_section}

    def save() -> None:
        report["budget"] = dict(budget.report(), dry_run=plan.dry_run)
        report["wall_s"] = round(budget.elapsed(), 1)
        artifacts.write_json(out, report)

    for name in args.sections:
        allowance = budget.open(name)
        print(f"== {name} (allowance {allowance:.0f} s, {budget.elapsed():.0f} s elapsed)", flush=True)
        try:
            section = runners[name](budget, plan, device)
        except Exception as err:  # one broken section must not cost the others
            section = {"dry_run": plan.dry_run, "error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc()[-3000:]}
            print(section["traceback"], flush=True)
        section["wall_s"] = round(budget.close(), 2)
        section["skipped_items"] = [s for s in budget.skipped if s["section"] == name]
        report[name] = section
        free_memory(device)
        save()
    save()
    print(f"gpu_check: {budget.elapsed():.0f} s of {plan.budget_s:.0f} s; {len(budget.skipped)} item(s) skipped; wrote {out}")


if __name__ == "__main__":
    main()
