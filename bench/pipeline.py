"""Student throughput: kdflow's training path against a live teacher and the mdistiller loop.

resnet32x4 -> resnet8x4 Hinton KD (kdlib's `kd`: T=4, 0.1 CE + 0.9 KD) on CIFAR-100-shaped
random data (uint8 3x32x32, 100 classes), the same student, method, batch and steps in
every variant; variants run interleaved, `--repeats` times, and medians are reported:

- `kdflow_cache`: `kdlib.train.fit` reading the teacher's logits from a logit cache written
  by `kdlib.logit_cache` (what a study's students do);
- `kdflow_live`: the same `fit` with the teacher run on every batch instead;
- `mdistiller`: the mdistiller way: a torch `DataLoader` over a `Dataset` whose
  `__getitem__` does RandomCrop(32, padding 4) + horizontal flip + normalisation per
  sample (plain torch ops, as torchvision's tensor transforms would; PIL decoding, which
  mdistiller also pays, is left out), the teacher run on every batch;
- `data_kdflow` / `data_dataloader`: the two data paths alone (no model) over
  `--data-images` images: the prepared data set as one tensor with batched
  `kdlib.data.augment` against the DataLoader.

On CUDA the kdflow variants use `Speed.for_device` (channels_last, bf16 autocast,
`--compile`) and keep the data set on the GPU; the mdistiller loop stays fp32. Writes
bench/results/pipeline_<device>.json.

    .venv/bin/python bench/pipeline.py                  # CPU: 4 steps of batch 64, 3 repeats
    .venv/bin/python bench/pipeline.py --device cuda --steps 50 --batch-size 128 --compile
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlib import artifacts
from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.data.augment import augment
from kdlib.data.dataset import Dataset, to_float
from kdlib.logit_cache import LogitCache, compute_cache, teacher_view_logits, write_cache
from kdlib.methods.base import Method, build_method, validate_method_entry
from kdlib.models import build_model
from kdlib.train import Speed, fit, resolve_device

RESULTS = Path(__file__).resolve().parent / "results"
TEACHER, STUDENT, CLASSES, SIZE, PADDING = "resnet32x4", "resnet8x4", 100, 32, 4


def random_cifar100(n: int, seed: int = 0, size: int = SIZE) -> Dataset:
    """CIFAR-100-shaped random data: uint8 images (`size` x `size`), labels in [0, 100), 2 test images."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n + 2, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, CLASSES, (n + 2,), generator=g)
    return Dataset(
        x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:], num_classes=CLASSES,
        coarse_of_class=torch.arange(CLASSES) // 5, mean=(0.507, 0.487, 0.441), std=(0.267, 0.256, 0.276),
        name="random-cifar100",
    )


class PerSampleCIFAR(torch.utils.data.Dataset):
    """mdistiller's CIFAR-100 train set: the transforms run per sample in `__getitem__`."""

    def __init__(self, ds: Dataset, padding: int) -> None:
        self.images, self.labels, self.padding = ds.x_train, ds.y_train, padding
        self.mean = torch.tensor(ds.mean).view(-1, 1, 1)
        self.std = torch.tensor(ds.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img = self.images[i]
        _, h, w = img.shape
        padded = F.pad(img, (self.padding,) * 4)
        dy, dx = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        img = padded[:, dy : dy + h, dx : dx + w]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return (img.float() / 255.0 - self.mean) / self.std, self.labels[i]


def mdistiller_loader(ds: Dataset, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        PerSampleCIFAR(ds, PADDING), batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )


def mdistiller_train(student: nn.Module, teacher: nn.Module, method: Method, loader, lr: float, device: torch.device) -> None:
    """One pass of mdistiller's train loop: live teacher on each batch, the same KD step as `fit`."""
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    student.train()
    teacher.eval()
    for x, target in loader:
        x, target = x.to(device), target.to(device)
        with torch.no_grad():
            teacher_logits, _ = teacher(x)
        logits, terms = method.forward_train(student, x, target, teacher_logits, 0)
        optimizer.zero_grad(set_to_none=True)
        method.backward(student, terms)
        optimizer.step()
        sum(terms.values()).item()
        (logits.argmax(1) == target).sum().item()


def kdflow_data(ds: Dataset, aug: AugmentConfig, batch_size: int, steps: int, device: torch.device) -> None:
    """kdflow's data path alone: index the resident tensor, augment the batch, normalise."""
    x_train = ds.x_train.to(device)
    order = torch.randperm(len(x_train))
    for step in range(steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        to_float(augment(x_train[idx.to(device)], aug.seed, 0, idx, aug.padding, aug.flip), ds.mean, ds.std)
    if device.type == "cuda":
        torch.cuda.synchronize()


def dataloader_data(loader, device: torch.device) -> None:
    for x, target in loader:
        x.to(device), target.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--steps", type=int, default=4, help="student steps per timed run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads; 1 by default: on a shared, loaded CPU, 2 OpenMP threads made batched ops 10-100x slower",
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes of the mdistiller loop")
    parser.add_argument("--data-images", type=int, default=16384, help="images of each data-path-only run")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student (CUDA only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    speed = Speed.for_device(device, args.compile)
    n = args.steps * args.batch_size
    ds = random_cifar100(n)
    aug = AugmentConfig(padding=PADDING, flip=True, seed=0)
    schedule = ScheduleConfig(epochs=1, batch_size=args.batch_size, lr=0.05)
    method = build_method("kd", validate_method_entry("kd", None))
    method.use_kernels("auto", device)
    torch.manual_seed(0)
    teacher = build_model(TEACHER, CLASSES).to(device).eval()
    if speed.channels_last:
        teacher.to(memory_format=torch.channels_last)

    print(f"caching the teacher's logits of {n} views ({TEACHER}) ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        meta = write_cache(Path(tmp), compute_cache(teacher, ds, aug, epochs=1, log=lambda _: None))
        cache_seconds = time.perf_counter() - started
        artifacts.write_manifest(Path(tmp), "cache_logits", "bench", meta)
        cached_views = LogitCache(Path(tmp)).views

        def live_views(epoch: int, idx: Tensor) -> Tensor:
            return teacher_view_logits(teacher, ds, aug, epoch, idx)

        def student() -> nn.Module:
            torch.manual_seed(1)
            return build_model(STUDENT, CLASSES)

        def run_fit(views) -> Callable[[], None]:
            return lambda: fit(student(), method, ds, schedule, 0, aug, teacher_views=views, device=device,
                               log=lambda _: None, speed=speed)

        loader = mdistiller_loader(ds, args.batch_size, args.workers)
        data_steps = args.data_images // args.batch_size
        data_ds = random_cifar100(data_steps * args.batch_size, seed=1)
        data_loader = mdistiller_loader(data_ds, args.batch_size, args.workers)
        variants: dict[str, tuple[Callable[[], None], int]] = {
            "kdflow_cache": (run_fit(cached_views), args.steps),
            "kdflow_live": (run_fit(live_views), args.steps),
            "mdistiller": (lambda: mdistiller_train(student().to(device), teacher, method, loader, 0.05, device), args.steps),
            "data_kdflow": (lambda: kdflow_data(data_ds, aug, args.batch_size, data_steps, device), data_steps),
            "data_dataloader": (lambda: dataloader_data(data_loader, device), data_steps),
        }
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for repeat in range(args.repeats + 1):  # repeat 0 warms up and is not kept
            for name, (fn, _) in variants.items():
                took = timed(fn)
                if repeat:
                    seconds[name].append(took)
                print(f"{'warm-up' if not repeat else f'repeat {repeat}/{args.repeats}'} {name}: {took:.2f}s", flush=True)

    median = {name: statistics.median(s) for name, s in seconds.items()}
    rates = {
        name: {"steps_per_s": steps / median[name], "images_per_s": steps * args.batch_size / median[name]}
        for name, (_, steps) in variants.items()
    }
    result = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "dataloader_workers": args.workers,
        "teacher": TEACHER, "student": STUDENT, "method": "kd", "classes": CLASSES, "image_size": SIZE,
        "batch_size": args.batch_size, "steps": args.steps, "data_images": data_steps * args.batch_size,
        "repeats": args.repeats,
        "speed": asdict(speed),
        "cache_build_seconds": cache_seconds,
        "seconds": seconds,
        "median_seconds": median,
        "rates": rates,
        "ratios": {
            "student_steps_per_s_cache_over_live": rates["kdflow_cache"]["steps_per_s"] / rates["kdflow_live"]["steps_per_s"],
            "student_images_per_s_kdflow_cache_over_mdistiller": (
                rates["kdflow_cache"]["images_per_s"] / rates["mdistiller"]["images_per_s"]
            ),
            "student_images_per_s_kdflow_live_over_mdistiller": (
                rates["kdflow_live"]["images_per_s"] / rates["mdistiller"]["images_per_s"]
            ),
            "data_images_per_s_kdflow_over_dataloader": (
                rates["data_kdflow"]["images_per_s"] / rates["data_dataloader"]["images_per_s"]
            ),
        },
    }
    out = RESULTS / f"pipeline_{device.type}.json"
    artifacts.write_json(out, result)
    print(json.dumps(result["ratios"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
