"""Speed and memory of the distillation-loss kernels against eager PyTorch and torch.compile.

For each loss, shape (N rows x C classes) and dtype it times forward + backward
(median of `--repeat` runs after warm-up) and reports:

* ``ms``: median milliseconds of ``loss = fn(...); loss.backward()``;
* ``gb_per_s``: the *minimum* bytes a fused implementation must move divided by
  that time: read student and teacher logits once, write the student gradient
  once (``sparse_kd``: the student, the top-K cache and the gradient;
  ``fused_linear_kd``: the hidden states and head weights read, their gradients
  written: it is matmul-bound, so its ``tflop_per_s`` is given too);
* ``peak_extra_mib``: peak device memory above the inputs during the step (CUDA
  allocator statistics; not available on CPU, so null there).

Backends: ``triton`` (kdlib.kernels.<family>, CUDA only), ``eager`` (the kdlib.losses.<family>
reference), ``compile`` (``torch.compile`` of that reference) and ``liger``
(Liger-Kernel's KLDiv after PyTorch log_softmax, the same KD value; kd_loss only,
CUDA only, when ``liger_kernel`` is installed). On CPU only the PyTorch paths
run, on a small grid (full-size rows do not fit a CPU's time or memory); the
JSON says so. Results go to ``bench/results/kernels_<device>.json``.

    .venv/bin/python bench/kernels.py                      # the grid for this machine
    .venv/bin/python bench/kernels.py --kernels kd_loss --rows 8192 --classes 128256 --dtypes bfloat16
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from kdlib import artifacts

OUT = Path(__file__).resolve().parent / "results"
FAMILY = {
    "kd_loss": "kd", "ce_kd_loss": "kd", "binary_kl_loss": "binary_kl", "binary_kl_norm_loss": "binary_kl",
    "dkd_loss": "dkd", "sparse_kd_loss": "sparse_kd", "fused_linear_kd_loss": "fused_linear_kd",
}
"""Each kernelled loss and its family: the stem of its `kdlib.kernels` and `kdlib.losses` modules."""
KERNELS = list(FAMILY)
GPU_GRID = {"rows": [1024, 4096, 8192], "classes": [100, 1000, 32000, 128256]}
CPU_GRID = {"rows": [1024], "classes": [100, 1000, 32000]}
TOPK = 20
TEMPERATURE = 4.0


def hidden_size(device: torch.device) -> int:
    """Hidden size of fused_linear_kd's heads: an LLM's (Llama-3 8B: 4096) on GPU, small on CPU."""
    return 4096 if device.type == "cuda" else 256


def make_inputs(name: str, n: int, c: int, dtype: torch.dtype, device: torch.device) -> tuple[list, int, float]:
    """(arguments, minimum bytes moved, matmul flops) for one loss; the student's tensors come first.

    Drawn on `device` by a generator of that device (the same values on every CPU): on the CPU
    one 8192 x 128256 tensor takes ~7 s to draw, on a GPU milliseconds."""
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int, scale: float = 3.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g, device=device)).to(dtype)

    item = torch.empty(0, dtype=dtype).element_size()
    target = torch.randint(0, c, (n,), generator=g, device=device)
    s, t = rand(n, c), rand(n, c)
    logit_bytes = 3 * n * c * item
    if name in ("kd_loss", "binary_kl_loss", "binary_kl_norm_loss"):
        return [s, t, TEMPERATURE], logit_bytes, 0.0
    if name == "ce_kd_loss":
        return [s, t, target, TEMPERATURE, 0.1, 0.9], logit_bytes, 0.0
    if name == "dkd_loss":
        return [s, t, target, 1.0, 8.0, TEMPERATURE], logit_bytes, 0.0
    if name == "sparse_kd_loss":
        k = min(TOPK, c)
        probs, idx = torch.softmax(t.float(), dim=1).topk(k, dim=1)
        return [s, probs.to(dtype), idx], 2 * n * c * item + n * k * (item + 8), 0.0
    if name == "fused_linear_kd_loss":
        h = hidden_size(device)
        args = [rand(n, h, scale=1.0), rand(c, h, scale=0.02), rand(n, h, scale=1.0), rand(c, h, scale=0.02), TEMPERATURE]
        # read h_s, W_s, h_t, W_t, write dh_s, dW_s; matmuls: two logit products, two gradient products
        return args, 3 * (n * h + c * h) * item, 4 * 2.0 * n * c * h
    raise ValueError(f"unknown kernel {name!r}")


def loss_fn(name: str, backend: str) -> Callable:
    reference = getattr(importlib.import_module(f"kdlib.losses.{FAMILY[name]}"), name)
    if backend == "eager":
        return reference
    if backend == "compile":
        # a fresh cache per shape: past torch._dynamo's recompile limit it would fall back to eager
        torch._dynamo.reset()
        return torch.compile(reference, dynamic=False)
    if backend == "triton":
        kernel = getattr(importlib.import_module(f"kdlib.kernels.{FAMILY[name]}"), name)  # imports triton
        return lambda *a: kernel(*a, backend="triton")
    if backend == "liger":
        from liger_kernel.transformers import LigerKLDIVLoss

        kl = LigerKLDIVLoss(reduction="batchmean", log_target=True)

        def liger_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
            log_ps = torch.log_softmax(s.float() / temperature, dim=1)
            log_pt = torch.log_softmax(t.float() / temperature, dim=1)
            return temperature * temperature * kl(log_ps, log_pt)

        return liger_kd
    raise ValueError(f"unknown backend {backend!r}")


def backends_for(name: str, device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["eager", "compile"]
    out = ["triton", "eager", "compile"]
    if name == "kd_loss":
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return out
        out.append("liger")
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    fn: Callable, args: list, trainable: list[torch.Tensor], device: torch.device, warmup: int, repeat: int
) -> tuple[list[float], float | None]:
    """Milliseconds of each forward + backward, and peak extra MiB (CUDA) above the inputs."""
    for a in trainable:
        a.requires_grad_(True)

    def step() -> None:
        for a in trainable:
            a.grad = None
        fn(*args).backward()

    for _ in range(warmup):
        step()
    sync(device)
    peak = None
    if device.type == "cuda":
        for a in trainable:
            a.grad = None
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync(device)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    for a in trainable:
        a.requires_grad_(False)
        a.grad = None
    return times, peak


def run(device: torch.device, names: list[str], rows: list[int], classes: list[int], dtypes: list[torch.dtype],
        warmup: int, repeat: int) -> list[dict]:
    results = []
    for name in names:
        for dtype in dtypes:
            for n in rows:
                for c in classes:
                    if name == "dkd_loss" and c < 2:
                        continue
                    try:
                        args, min_bytes, flops = make_inputs(name, n, c, dtype, device)
                    except torch.OutOfMemoryError:
                        results.append({"kernel": name, "dtype": str(dtype).removeprefix("torch."), "rows": n,
                                        "classes": c, "error": "out of memory building the inputs"})
                        continue
                    for backend in backends_for(name, device):
                        results.append(measure_backend(name, backend, n, c, dtype, (args, min_bytes, flops), device,
                                                       warmup, repeat))
                    del args
    return results


def measure_backend(name: str, backend: str, n: int, c: int, dtype: torch.dtype, inputs: tuple[list, int, float],
                    device: torch.device, warmup: int, repeat: int) -> dict:
    """One result row: `backend`'s forward + backward of `name` on `inputs = make_inputs(name, n, c, dtype,
    device)` (or its error)."""
    args, min_bytes, flops = inputs
    row = {"kernel": name, "backend": backend, "dtype": str(dtype).removeprefix("torch."),
           "rows": n, "classes": c, "min_bytes": min_bytes}
    try:
        trainable = args[:2] if name == "fused_linear_kd_loss" else args[:1]
        times, peak = measure(loss_fn(name, backend), args, trainable, device, warmup, repeat)
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
        torch.cuda.empty_cache()
    else:
        ms = statistics.median(times)
        row.update(ms=round(ms, 4), gb_per_s=round(min_bytes / ms / 1e6, 2),
                   peak_extra_mib=None if peak is None else round(peak, 1))
        if flops:
            row["tflop_per_s"] = round(flops / ms / 1e9, 2)
    print(f"{name:22s} {backend:8s} {row['dtype']:9s} N={n:5d} C={c:6d} "
          + (f"{row['ms']:9.3f} ms {row['gb_per_s']:8.2f} GB/s"
             + ("" if row.get("peak_extra_mib") is None else f" peak +{row['peak_extra_mib']:.0f} MiB")
             if "ms" in row else row["error"]), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kernels", nargs="+", default=KERNELS, choices=KERNELS)
    parser.add_argument("--rows", nargs="+", type=int)
    parser.add_argument("--classes", nargs="+", type=int)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/kernels_<device>.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    grid = GPU_GRID if device.type == "cuda" else CPU_GRID
    rows = args.rows or grid["rows"]
    classes = args.classes or grid["classes"]
    repeat = args.repeat or (20 if device.type == "cuda" else 5)
    dtypes = [getattr(torch, d) for d in args.dtypes]
    started = time.time()
    results = run(device, args.kernels, rows, classes, dtypes, args.warmup, repeat)
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
        note = "Triton kernels and PyTorch baselines on the GPU named in 'machine'."
    else:
        machine = f"CPU, {args.threads} torch threads"
        note = ("CPU run: PyTorch paths only (eager reference and torch.compile); the Triton kernels need a GPU "
                "(their CPU interpreter is for correctness, not speed) and the grid is reduced to shapes a CPU "
                "handles. These numbers say nothing about the H100 targets, which are unmeasured.")
    report = {
        "machine": machine,
        "device": device.type,
        "torch": torch.__version__,
        "note": note,
        "min_bytes": "read student and teacher logits once and write the student gradient once (see bench/kernels.py)",
        "temperature": TEMPERATURE,
        "fused_linear_hidden": hidden_size(device),
        "sparse_topk": TOPK,
        "warmup": args.warmup,
        "repeat": repeat,
        "wall_s": round(time.time() - started, 1),
        "results": results,
    }
    out = args.out or OUT / f"kernels_{device.type}.json"
    artifacts.write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
