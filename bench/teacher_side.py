"""Teacher-side methods, measured: does MCMI raise the teacher's CMI, and what do students
distilled from each teacher reach?

The default `params.yaml` on scikit-learn's digits (10 classes, 1437 training images; the
synthetic CIFAR-100-shaped data costs ~1 min per teacher epoch on a shared 2-core machine),
a resnet20 teacher and an extra wrn_16_2 teacher (10 epochs each), two 4-epoch fine-tunes of
`teacher` (MCMI, lam = -0.25, and the CE-only control), then resnet8 KD students (8 epochs)
from each teacher and multi_teacher_kd over {teacher, wrn_16_2_s1}, all through the
content-addressed store (reused across runs). Writes bench/results/teacher_side.json: per
teacher its test top-1 and CMI (mean KL(P_x || Q_y) over the un-augmented training images, Q
its own class centroids: the quantity MCMI maximises), per student method the last-epoch
test top-1 per seed, and the temperatures multi_teacher_kd's entropy balance gives on epoch
0's views (per batch of 64: mean, min, max).

    .venv/bin/python bench/teacher_side.py [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdlib import artifacts  # noqa: E402
from kdlib.config import load_config  # noqa: E402
from kdlib.data.dataset import load_dataset  # noqa: E402
from kdlib.logit_cache import LogitCache  # noqa: E402
from kdlib.losses.multi_teacher_kd import entropy_balanced_temperatures  # noqa: E402
from kdlib.mcmi import class_centroids, mcmi_regularizer  # noqa: E402
from kdlib.train import predict  # noqa: E402
from tasks import cache_logits, finetune_teacher, prepare_data, train_student, train_teacher  # noqa: E402
from tasks.common import setup_torch  # noqa: E402

SCHEDULE = {"epochs": 4, "batch_size": 64, "lr": 0.05, "scheduler": "cosine"}
TEACHER = {"epochs": 10, "batch_size": 64, "lr": 0.1, "scheduler": "cosine", "warmup_epochs": 1}
STUDY = {
    "data": {"source": "digits", "seed": 0, "test_fraction": 0.2},
    "teacher": {"arch": "resnet20", "seed": 0, "schedule": TEACHER},
    "teachers": {"wrn_16_2_s1": {"arch": "wrn_16_2", "seed": 1, "schedule": TEACHER}},
    "finetuned_teachers": {
        "teacher_mcmi": {"regularizer": "mcmi", "lam": -0.25, "schedule": SCHEDULE},
        "teacher_ce_ft": {"regularizer": "none", "schedule": SCHEDULE},
    },
    "methods": {
        "kd": {},
        "kd_teacher_mcmi": {"method": "kd", "teacher": "teacher_mcmi"},
        "kd_teacher_ce_ft": {"method": "kd", "teacher": "teacher_ce_ft"},
        "kd_wrn": {"method": "kd", "teacher": "wrn_16_2_s1"},
        "multi_teacher_kd": {"teachers": ["teacher", "wrn_16_2_s1"]},
    },
    "tracking": {"enabled": False},
}


def cmi(model: torch.nn.Module, ds) -> float:
    """The teacher's CMI estimate: mean KL(P_x || Q_y), Q its own class centroids."""
    logits = predict(model, ds.x_train, ds).double()
    return mcmi_regularizer(logits, ds.y_train, class_centroids(logits, ds.y_train, ds.num_classes)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    methods = list(STUDY["methods"])
    cfg = load_config(ROOT / "params.yaml", {**STUDY, "students": {"methods": methods, "seeds": args.seeds}})
    setup_torch(cfg)
    data = prepare_data.cached(cfg)
    ds = load_dataset(Path(data["dir"]) / "dataset.pt")
    models = {"teacher": train_teacher.cached(cfg, data, "teacher")}
    models["wrn_16_2_s1"] = train_teacher.cached(cfg, data, "wrn_16_2_s1")
    for name in cfg.finetuned_teachers:
        models[name] = finetune_teacher.cached(cfg, name, data, models["teacher"])
    caches = {name: cache_logits.cached(cfg, data, model) for name, model in models.items()}
    result: dict = {"teachers": {}, "students": {}, "seeds": args.seeds}
    for name, model in models.items():
        teacher = train_teacher.load_teacher(cfg, data, model)
        result["teachers"][name] = {"top1": model["meta"]["test"]["top1"], "cmi": cmi(teacher, ds)}
        print(name, result["teachers"][name], flush=True)
    for method in methods:
        names = train_student.student_teachers(cfg, method)
        logits = caches[names[0]] if len(names) == 1 else [caches[n] for n in names]
        top1 = []
        for seed in args.seeds:
            student = train_student.cached(cfg, method, seed, data, logits)
            history = json.loads((Path(student["dir"]) / "history.json").read_text())
            top1.append(history[-1]["test_top1"])
        result["students"][method] = {"top1": top1, "mean": statistics.mean(top1)}
        print(method, result["students"][method], flush=True)
    stacked = torch.stack([LogitCache(Path(caches[n]["dir"])).views(0, torch.arange(len(ds.x_train))) for n in ("teacher", "wrn_16_2_s1")])
    taus = [entropy_balanced_temperatures(stacked[:, i:i + 64], 1.0, 10.0).tolist() for i in range(0, stacked.shape[1] - 63, 64)]
    result["multi_teacher_kd_temperatures_epoch0"] = {
        name: {"mean": statistics.mean(t[k] for t in taus), "min": min(t[k] for t in taus), "max": max(t[k] for t in taus)}
        for k, name in enumerate(("teacher", "wrn_16_2_s1"))
    }
    out = ROOT / "bench" / "results" / "teacher_side.json"
    artifacts.write_json(out, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
