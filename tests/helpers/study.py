"""Study configs for the tests: the tiny study, its token twin, and the tiny study with extra and fine-tuned teachers."""
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


TINY_LM_STUDY = {
    "study": "tiny-lm",
    "data": {"source": "text", "seed": 0, "vocab_size": 300, "context": 16, "max_chars": 30000},
    "teacher": {"arch": "gpt_nano", "seed": 0,
                "schedule": {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0}},
    "students": {
        "arch": "gpt_nano",
        "seeds": [0],
        "schedule": {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0},
        "methods": ["ce", "kd"],
    },
    "logits": {"batch_size": 512, "topk": 8},
    "methods": {"ce": {}, "kd": {"temperature": 1.0}},
    "evaluation": {"ece_bins": 15, "probe_size": 8, "nc_every": 0},
    "tracking": {"enabled": True, "uri": "sqlite:///mlflow.db", "experiment": "tiny-lm"},
    "runtime": {"device": "cpu", "threads": 1, "store": ".kdflow/store"},
}
"""A token study of seconds: 30K characters of the pydoc corpus, a 300-token BPE, 1-layer GPTs."""


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
