"""Cost of the per-epoch diagnostics (`kdlib.diagnostics.Probe`) against the epoch they describe.

On the default study's shapes (synthetic CIFAR-100-shaped data, 40 train images per
class = 4000, 8x8, resnet8 student, batch 64, one CPU thread: the machine is shared), for
methods with 1 to 3 loss terms and one or two heads: the median over `REPEATS` calls of
`Probe.conflict` (probe batch of 128: one forward, one backward per term) and of
`Probe.collapse` (one eval pass over the training set + NC metrics), next to the median
time of one training epoch (forward, backward and SGD step over every batch, no test
evaluation). The teacher logits are random (the cost does not depend on them).
Writes bench/results/diagnostics.json.

    .venv/bin/python bench/diagnostics.py
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from kdlib.config import AugmentConfig
from kdlib.data.augment import augment
from kdlib.data.dataset import to_float
from kdlib.data.sources.synthetic import make_synthetic
from kdlib.diagnostics import Probe
from kdlib.methods.base import build_method, validate_method_entry
from kdlib.models import build_model
from kdlib.train import epoch_order

OUT = Path(__file__).resolve().parent / "results" / "diagnostics.json"
BATCH, PROBE, REPEATS, THREADS = 64, 128, 5, 1
METHODS = ["ce", "kd", "ce+binarykl_norm", "dhkd", "dhkd_kd"]


def median_seconds(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(THREADS)
    ds = make_synthetic(seed=0, num_train_per_class=40, num_test_per_class=20, image_size=8)
    augment_config = AugmentConfig()
    teacher = torch.randn(len(ds.x_train), ds.num_classes, generator=torch.Generator().manual_seed(0)) * 3
    rows = []
    for name in METHODS:
        torch.manual_seed(0)
        method = build_method(name, validate_method_entry(name, None))
        model = method.build(build_model("resnet8", ds.num_classes, ds.num_channels, ds.image_size))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        probe = Probe(method, ds, augment_config, epochs=1, teacher_views=lambda e, idx: teacher[idx], probe_size=PROBE)

        def epoch() -> None:
            model.train()
            order = epoch_order(0, 0, len(ds.x_train))
            for start in range(0, len(order) - BATCH + 1, BATCH):
                idx = order[start : start + BATCH]
                x = to_float(augment(ds.x_train[idx], 0, 0, idx, augment_config.padding, augment_config.flip), ds.mean, ds.std)
                _, terms = method.forward_train(model, x, ds.y_train[idx], teacher[idx], 0)
                optimizer.zero_grad(set_to_none=True)
                method.backward(model, terms)
                optimizer.step()

        epoch_s = median_seconds(epoch, 3)
        conflict_s = median_seconds(lambda: probe.conflict(model, 0))
        collapse_s = median_seconds(lambda: probe.collapse(model))
        terms = len(method.forward_train(model, to_float(ds.x_train[:2], ds.mean, ds.std), ds.y_train[:2], teacher[:2], 0)[1])
        rows.append({
            "method": name, "terms": terms, "epoch_s": epoch_s, "conflict_s": conflict_s, "collapse_s": collapse_s,
            "conflict_vs_epoch": conflict_s / epoch_s, "collapse_vs_epoch": collapse_s / epoch_s,
        })
        print(f"{name}: epoch {epoch_s:.2f}s, conflict {conflict_s * 1000:.0f} ms ({100 * conflict_s / epoch_s:.1f}%), "
              f"collapse {collapse_s * 1000:.0f} ms ({100 * collapse_s / epoch_s:.1f}%)", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "setup": {"arch": "resnet8", "classes": ds.num_classes, "train": len(ds.x_train), "image_size": ds.image_size,
                  "batch": BATCH, "probe_size": PROBE, "threads": THREADS, "torch": torch.__version__},
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
