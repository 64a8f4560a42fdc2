"""Study configs for the tests: the tiny study, and the tiny study with extra and fine-tuned teachers."""
from __future__ import annotations

import copy

TINY_STUDY = {
    "study": "tiny",
    "data": {"source": "digits", "seed": 0, "test_fraction": 0.2},
    "augment": {"padding": 1, "flip": True, "seed": 3},
    "teacher": {"arch": "resnet8", "seed": 0, "schedule": {"epochs": 1, "batch_size": 128, "lr": 0.05}},
    "students": {
        "arch": "mlp",
        "seeds": [0],
        "schedule": {"epochs": 2, "batch_size": 128, "lr": 0.05},
        "methods": ["ce", "kd"],
    },
    "logits": {"dtype": "float16", "batch_size": 500, "topk": 3},
    "methods": {"ce": {}, "kd": {}},
    "evaluation": {"ece_bins": 15, "probe_size": 64, "nc_every": 0},
    "tracking": {"enabled": True, "uri": "sqlite:///mlflow.db", "experiment": "tiny"},
    "runtime": {"device": "cpu", "threads": 1, "store": ".kdflow/store"},
}


def study_with_teachers(**changes):
    """TINY_STUDY with an extra teacher (`second`), a fine-tuned one (`teacher_mcmi`) and students
    reading them (`kd_mcmi`, `mt`); each `a__b=value` sets raw[a][b] = value."""
    raw = copy.deepcopy(TINY_STUDY)
    raw["teachers"] = {"second": {"arch": "mlp", "seed": 1, "schedule": {"epochs": 1, "batch_size": 128}}}
    raw["finetuned_teachers"] = {"teacher_mcmi": {"lam": -0.5, "schedule": {"epochs": 2, "batch_size": 128, "lr": 0.01}}}
    raw["students"]["methods"] = ["kd", "kd_mcmi", "mt"]
    raw["methods"] = {
        "kd": {},
        "kd_mcmi": {"method": "kd", "teacher": "teacher_mcmi"},
        "mt": {"method": "multi_teacher_kd", "teachers": ["teacher", "second", "teacher_mcmi"]},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value
    return raw
