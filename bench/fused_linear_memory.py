"""Peak memory of KD through the LM head on CPU: eager (full logits) vs chunked fused linear KD.

Eager is `kdlib.losses.fused_linear_kd.fused_linear_kd_loss`: it materialises the student's and
the teacher's (N, V) logits and autograd keeps several more. Chunked is
`kdlib.kernels.fused_linear_kd.fused_linear_kd_loss(..., backend="torch_chunked", memory_budget=...)`:
the chunk loop of the Triton path with the per-chunk KD loss and logit gradient in plain PyTorch,
the path for CPU (`backend="torch"`, and `"auto"` on CPU, are the eager reference, as in every
kernel module). The chunked worker also checks that the call did not fall through to eager. Each measurement is one forward + backward in a fresh process:
inputs built, then the peak RSS of the process (`resource.getrusage(...).ru_maxrss`) minus
its RSS once the inputs exist. The kernel is reset to the current RSS first
(`/proc/self/clear_refs` 5) so that transients of imports and input building cannot
hide a lower peak; where the reset is refused the number is an upper bound, flagged per run.
Variants alternate over `--reps` repetitions; medians are reported. The first repetition
of each variant also saves its loss and gradients, and the parent reports the largest
absolute difference of the chunked ones from eager. Writes bench/results/fused_linear_memory.json
with the target "chunked peak <= 1/5 of eager" met or not.

    OMP_NUM_THREADS=1 .venv/bin/python bench/fused_linear_memory.py           # N 4096, hidden 256, V 32768
    OMP_NUM_THREADS=1 .venv/bin/python bench/fused_linear_memory.py --quick   # tiny sizes, seconds (tests/bench)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "results" / "fused_linear_memory.json"
VARIANTS = ("eager", "chunked")
CHUNKED_BACKEND = "torch_chunked"
FULL = {"rows": 4096, "hidden": 256, "teacher_hidden": 256, "vocab": 32768, "budget_mib": 32.0, "reps": 3}
QUICK = {"rows": 256, "hidden": 32, "teacher_hidden": 32, "vocab": 2048, "budget_mib": 0.25, "reps": 2}
TEMPERATURE = 2.0
TARGET = 0.2  # chunked peak <= 1/5 of eager


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak() -> bool:
    """Set the process's peak RSS to its current RSS (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return peak_rss_bytes() - rss_bytes() < 4 * 2**20


def worker(variant: str, settings: dict[str, Any], grads_path: str | None) -> dict[str, Any]:
    """One forward + backward of `variant` in this (fresh) process; its peak RSS above the inputs."""
    import torch

    import kdlib.kernels.fused_linear_kd as chunked_module  # both imported by both variants: same baseline
    import kdlib.losses.fused_linear_kd as eager_module

    torch.set_num_threads(settings["threads"])
    ran_reference = []
    eager_fn = eager_module.fused_linear_kd_loss

    def spy(*args: Any, **kwargs: Any) -> Any:
        ran_reference.append(True)
        return eager_fn(*args, **kwargs)

    budget = int(settings["budget_mib"] * 2**20)
    if variant == "eager":
        def loss_fn(*xs: Any) -> Any:
            return eager_fn(*xs, TEMPERATURE)
    else:
        eager_module.fused_linear_kd_loss = spy  # records whether the chunked call fell through to eager

        def loss_fn(*xs: Any) -> Any:
            return chunked_module.fused_linear_kd_loss(*xs, TEMPERATURE, backend=CHUNKED_BACKEND, memory_budget=budget)

    n, h, ht, v = settings["rows"], settings["hidden"], settings["teacher_hidden"], settings["vocab"]
    gen = torch.Generator().manual_seed(0)
    h_s = torch.randn(n, h, generator=gen).requires_grad_()
    w_s = (torch.randn(v, h, generator=gen) * h**-0.5).requires_grad_()
    h_t = torch.randn(n, ht, generator=gen)
    w_t = torch.randn(v, ht, generator=gen) * ht**-0.5
    base = rss_bytes()
    peak_before = peak_rss_bytes()
    reset = reset_peak()
    started = time.perf_counter()
    loss = loss_fn(h_s, w_s, h_t, w_t)
    loss.backward()
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    if grads_path:
        torch.save({"loss": loss.detach(), "grad_student_hidden": h_s.grad, "grad_student_weight": w_s.grad}, grads_path)
    return {
        "variant": variant,
        "peak_extra_mib": max(peak - base, 0) / 2**20,
        "inputs_rss_mib": base / 2**20,
        "peak_before_reset_mib": peak_before / 2**20,
        "peak_reset": reset,
        "seconds": seconds,
        "loss": loss.item(),
        "ran_eager_reference": bool(ran_reference),
    }


def run_worker(variant: str, settings: dict[str, Any], grads_path: str | None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--settings", json.dumps(settings)]
    if grads_path:
        cmd += ["--grads", grads_path]
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"])}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} worker failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_abs_diffs(eager_path: Path, chunked_path: Path) -> dict[str, dict[str, float]]:
    import torch

    eager = torch.load(eager_path, weights_only=True)
    chunked = torch.load(chunked_path, weights_only=True)
    out = {}
    for name in eager:
        diff, scale = (chunked[name] - eager[name]).abs().max().item(), eager[name].abs().max().item()
        out[name] = {"max_abs_diff": diff, "max_abs_eager": scale,
                     "max_abs_diff_over_max_abs_eager": diff / scale if scale else None}
    return out


def machine() -> dict[str, Any]:
    import importlib.metadata

    import torch

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a few seconds), for the test")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--budget-mib", type=float, help="the chunked path's memory_budget, MiB")
    parser.add_argument("--reps", type=int)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (the machine is shared)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--grads", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(args.settings), args.grads)), flush=True)
        return

    from kdlib import artifacts
    from kdlib.kernels.fused_linear_kd import chunk_rows

    settings = dict(QUICK if args.quick else FULL)
    for key in ("rows", "hidden", "vocab", "budget_mib", "reps"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.hidden is not None:
        settings["teacher_hidden"] = args.hidden
    settings.update(threads=args.threads, quick=args.quick, temperature=TEMPERATURE, dtype="float32",
                    chunked_backend=CHUNKED_BACKEND)
    settings["memory_budget_bytes"] = int(settings["budget_mib"] * 2**20)
    settings["chunk_rows"] = chunk_rows(settings["rows"], settings["vocab"], 4, settings["memory_budget_bytes"])
    started = time.time()
    raw: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(settings["reps"]):
            for variant in VARIANTS:  # alternating, so a change in machine load hits both alike
                grads = str(Path(tmp) / f"{variant}.pt") if rep == 0 else None
                row = run_worker(variant, settings, grads)
                raw[variant].append(row)
                print(f"rep {rep + 1}/{settings['reps']} {variant:8s}: peak +{row['peak_extra_mib']:8.1f} MiB "
                      f"{row['seconds']:6.2f}s (peak reset: {row['peak_reset']})", flush=True)
        diffs = max_abs_diffs(Path(tmp) / "eager.pt", Path(tmp) / "chunked.pt")
    median_mib = {v: statistics.median(r["peak_extra_mib"] for r in raw[v]) for v in VARIANTS}
    ratio = median_mib["chunked"] / median_mib["eager"] if median_mib["eager"] > 0 else None
    fell_through = any(r["ran_eager_reference"] for r in raw["chunked"])
    report = {
        "bench": "fused_linear_memory",
        "machine": machine(),
        "settings": settings,
        "measure": ("peak RSS (ru_maxrss) minus RSS after the inputs are built, one forward + backward per fresh "
                    "process; the peak is reset to the current RSS before the step (/proc/self/clear_refs 5)"),
        "logits_matrix_mib": settings["rows"] * settings["vocab"] * 4 / 2**20,
        "chunk_logits_mib": settings["chunk_rows"] * settings["vocab"] * 4 / 2**20,
        "n_chunks": -(-settings["rows"] // settings["chunk_rows"]),
        "weight_grad_mib": settings["vocab"] * settings["hidden"] * 4 / 2**20,
        "raw": raw,
        "median_peak_extra_mib": median_mib,
        "median_seconds": {v: statistics.median(r["seconds"] for r in raw[v]) for v in VARIANTS},
        "ratio_chunked_over_eager": ratio,
        "target": f"chunked peak <= {TARGET:g} x eager",
        "target_met": ratio is not None and ratio <= TARGET,
        "chunked_ran_eager_reference": fell_through,
        "chunked_vs_eager": diffs,
        "wall_s": round(time.time() - started, 1),
    }
    if fell_through:
        report["note"] = (f"the chunked call with backend={CHUNKED_BACKEND!r} on CPU ran the eager reference: "
                          "both variants are eager, the ratio says nothing about the chunked path")
    artifacts.write_json(args.out, report)
    secs = report["median_seconds"]
    print(f"median seconds (forward + backward): eager {secs['eager']:.2f}, chunked {secs['chunked']:.2f}")
    print(f"median peak extra: eager {median_mib['eager']:.1f} MiB, chunked {median_mib['chunked']:.1f} MiB, "
          f"ratio {ratio if ratio is None else round(ratio, 3)}; target (<= {TARGET:g}) "
          f"{'met' if report['target_met'] else 'NOT met'}" + (f" - {report['note']}" if fell_through else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
