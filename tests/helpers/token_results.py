"""Fake records of a finished token study (the manifests and files `aggregate` reads), for the
report and aggregate tests of a language-model study without training one: seconds, not minutes."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from kdlib import artifacts
from kdlib.config import StudyConfig, parse_config
from tests.helpers.study import TINY_LM_STUDY

METHODS = ["ce", "kd", "reverse_kl"]
VAL_PPL = {("ce", 0): 180.0, ("ce", 1): 182.0, ("kd", 0): 170.0, ("kd", 1): 171.0,
           ("reverse_kl", 0): 200.0, ("reverse_kl", 1): 197.0}
"""Per (method, seed): kd beats ce by more than the seed spread, reverse_kl is worse; token accuracy
is ordered the other way round for reverse_kl (the best top-1, the worst perplexity)."""
TOP1 = {"ce": 17.0, "kd": 18.0, "reverse_kl": 19.0}
TEACHER = {"top1": 21.4, "top5": 40.0, "nll": 4.73, "ppl": 113.0, "ece": 4.3, "val_nll": 4.78, "val_ppl": 119.0}
DATA = {"kind": "tokens", "name": "text-pydoc-s0-v300-t16", "num_train": 120, "num_val": 12, "num_test": 11,
        "num_classes": 300, "shape": [16], "context": 16, "tokens": {"train": 1920, "val": 192, "test": 176}}
CACHE = {"kind": "tokens", "topk": 8, "bytes_per_token": 36.0, "dense_bytes_per_token": 600, "teacher_key": "t" * 24}


def token_cfg() -> StudyConfig:
    raw = copy.deepcopy(TINY_LM_STUDY)
    raw["students"].update(methods=METHODS, seeds=[0, 1], schedule={**raw["students"]["schedule"], "epochs": 2})
    raw["methods"] = {m: {} for m in METHODS}
    return parse_config(raw)


def metrics(method: str, seed: int) -> dict[str, Any]:
    val_ppl = VAL_PPL[(method, seed)]
    top1 = TOP1[method] + 0.1 * seed
    return {"method": method, "seed": seed, "top1": top1, "best_top1": top1, "top5": top1 + 18.0,
            "nll": math.log(val_ppl) - 0.1, "ppl": val_ppl - 10.0, "val_nll": math.log(val_ppl), "val_ppl": val_ppl,
            "ece": 2.0, "agreement": 50.0 + top1, "kl_to_teacher": 0.5, "best_epoch": 2, "last_epoch": 2}


def fake_token_study(root: Path) -> tuple[StudyConfig, dict, list[dict], dict, dict]:
    """(cfg, teacher, evaluations, data, logits) manifests of a 3-method x 2-seed token study under `root`."""
    root = Path(root)
    cfg = token_cfg()
    data = artifacts.write_manifest(root / "data", "prepare_data", "d" * 24, DATA)
    artifacts.write_json(root / "teacher" / "history.json", [{"epoch": 1, "test_top1": 20.0, "test_nll": 4.9, "loss": 5.0},
                                                             {"epoch": 2, "test_top1": 21.4, "test_nll": 4.7, "loss": 4.8}])
    teacher = artifacts.write_manifest(root / "teacher", "train_teacher", "t" * 24, {
        "arch": "gpt_nano", "made": "trained", "best_epoch": 2, "best_top1": TEACHER["top1"], "test": TEACHER})
    logits = artifacts.write_manifest(root / "logits", "cache_logits", "c" * 24, CACHE)
    evaluations = []
    for method in METHODS:
        for seed in (0, 1):
            m = metrics(method, seed)
            student = root / "students" / method / str(seed)
            history = [{"epoch": e, "loss": 6.0 - e, "test_top1": m["top1"] - 2.0 * (2 - e),
                        "test_nll": m["nll"] + 0.5 * (2 - e), "lr": 0.003, "train_top1": 10.0} for e in (1, 2)]
            if method == "kd":
                for record in history:
                    record.update({"grad_cos/head/ce_vs_kd": 0.4, "grad_cos/backbone/ce_vs_kd": 0.2})
            artifacts.write_json(student / "history.json", history)
            out = root / "evaluations" / method / str(seed)
            artifacts.write_json(out / "reliability.json", {"confidence_sum": [0.5, 3.0, 4.2], "correct": [1, 3, 5],
                                                            "count": [4, 5, 5]})
            artifacts.write_json(out / "metrics.json", m)
            evaluations.append(artifacts.write_manifest(out, "evaluate", f"{method}{seed}".ljust(24, "e"), {
                "metrics": m, "student_dir": str(student), "student_key": f"{method}{seed}".ljust(24, "s")}))
    return cfg, teacher, evaluations, data, logits
