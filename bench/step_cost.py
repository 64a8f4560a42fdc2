"""Cost of one training step of the methods that change the model or the backward.

`grad_align` runs one backward per loss term instead of one for their sum; `uskd` adds a
weak head; `bdkd` trains a whole teacher in the same step. Each is timed against the
method it extends, on the default study's shapes (resnet8 student, resnet20 online
teacher, 100 classes, 8x8 images, batch 64), on CPU with one thread (the machine is shared;
fewer threads vary less): forward, the method's backward and an SGD step, median of
`REPEATS` steps after `WARMUP`, the methods timed round-robin so that a change in load hits
all alike. Writes bench/results/step_cost.json.

    .venv/bin/python bench/step_cost.py
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from kdlib.methods.base import build_method, validate_method_entry
from kdlib.models import build_model

OUT = Path(__file__).resolve().parent / "results" / "step_cost.json"
BATCH, CLASSES, SIZE, WARMUP, REPEATS, THREADS = 64, 100, 8, 5, 30, 1
CASES = [  # (entry name, settings, baseline entry)
    ("dhkd", {}, None),
    ("dhkd_grad_align", {"method": "dhkd", "grad_align": "shared"}, "dhkd"),
    ("dhkd_kd", {}, None),
    ("dhkd_kd_grad_align", {"method": "dhkd_kd", "grad_align": "shared"}, "dhkd_kd"),
    ("ce", {}, None),
    ("uskd", {}, "ce"),
    ("kd", {}, None),
    ("bdkd", {}, "kd"),
]


class Case:
    """One method on fixed inputs; `step()` is one timed training step."""

    def __init__(self, name: str, settings: dict) -> None:
        torch.manual_seed(0)
        self.method = build_method(name, validate_method_entry(name, settings))
        student = build_model("resnet8", CLASSES, 3, SIZE)
        if self.method.online_teacher:
            self.model = self.method.build(student, build_model("resnet20", CLASSES, 3, SIZE))
        else:
            self.model = self.method.build(student)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.x = torch.randn(BATCH, 3, SIZE, SIZE)
        self.y = torch.randint(0, CLASSES, (BATCH,))
        self.teacher = torch.randn(BATCH, CLASSES) * 3 if self.method.needs_teacher else None

    def step(self) -> float:
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        _, terms = self.method.forward_train(self.model, self.x, self.y, self.teacher, epoch=0)
        self.method.backward(self.model, terms)
        self.optimizer.step()
        return time.perf_counter() - started


def main() -> None:
    torch.set_num_threads(THREADS)
    cases = {name: Case(name, settings) for name, settings, _ in CASES}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(WARMUP + REPEATS):  # round-robin, so a change in machine load hits every method alike
        for name, case in cases.items():
            seconds = case.step()
            if i >= WARMUP:
                times[name].append(seconds)
    rows = {}
    for name, _, baseline in CASES:
        seconds = statistics.median(times[name])
        rows[name] = {"ms_per_step": round(1000 * seconds, 2), "baseline": baseline}
        if baseline:
            rows[name]["x_baseline"] = round(seconds / (rows[baseline]["ms_per_step"] / 1000), 2)
        print(f"{name:20s} {1000 * seconds:7.2f} ms/step" + (f"  x{rows[name]['x_baseline']:.2f} of {baseline}" if baseline else ""))
    meta = {"torch": torch.__version__, "threads": THREADS, "batch": BATCH, "classes": CLASSES, "image_size": SIZE,
            "student": "resnet8", "online_teacher": "resnet20", "warmup": WARMUP, "repeats": REPEATS, "statistic": "median"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"meta": meta, "methods": rows}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
