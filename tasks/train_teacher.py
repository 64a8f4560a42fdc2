"""train_teacher: train the teacher once with cross-entropy on its own replayed views."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdlib import artifacts
from kdlib.config import StudyConfig
from kdlib.data import load_dataset
from kdlib.methods import build_method
from kdlib.metrics import evaluate_logits
from kdlib.models import build_model
from kdlib.train import fit, predict, resolve_device
from tasks import common

STEP = "train_teacher"
CODE = (
    "tasks/train_teacher.py", "kdlib/train.py", "kdlib/models.py", "kdlib/methods.py",
    "kdlib/losses.py", "kdlib/data.py", "kdlib/metrics.py",
)
MODEL, HISTORY = "model.pt", "history.json"


def config_slice(cfg: StudyConfig) -> dict:
    return {"teacher": cfg.teacher.model_dump(), "augment": cfg.augment.model_dump()}


def key(cfg: StudyConfig, data: common.Manifest) -> str:
    return common.cache_key(STEP, config_slice(cfg), [data], CODE)


def load_teacher(cfg: StudyConfig, data: common.Manifest, teacher: common.Manifest) -> torch.nn.Module:
    """The trained teacher, in eval mode, on CPU."""
    meta = data["meta"]
    model = build_model(cfg.teacher.arch, meta["num_classes"], meta["shape"][0], meta["shape"][-1])
    model.load_state_dict(artifacts.load_tensors(Path(teacher["dir"]) / MODEL))
    return model.eval()


def run(cfg: StudyConfig, data: common.Manifest, out_dir: Path) -> common.Manifest:
    k = key(cfg, data)
    checkpoint = common.checkpoint_path(cfg, STEP, k)
    ds = load_dataset(Path(data["dir"]) / "dataset.pt")
    torch.manual_seed(cfg.teacher.seed)
    model = build_model(cfg.teacher.arch, ds.num_classes, ds.num_channels, ds.image_size)
    with artifacts.exclusive(checkpoint.with_suffix(".lock")):
        result = fit(
            model, build_method("ce"), ds, cfg.teacher.schedule, cfg.teacher.seed,
            # the teacher's own views come from its seed; the students replay augment.seed
            cfg.augment.model_copy(update={"seed": cfg.teacher.seed}),
            device=resolve_device(cfg.runtime.device), label=f"teacher {cfg.teacher.arch}", checkpoint=checkpoint,
        )
        model.cpu()
        metrics = evaluate_logits(predict(model, ds.x_test, ds), ds.y_test, ece_bins=cfg.evaluation.ece_bins)
        artifacts.save_tensors(Path(out_dir) / MODEL, model.state_dict())
        artifacts.write_json(Path(out_dir) / HISTORY, result.history)
        meta = {"arch": cfg.teacher.arch, "best_epoch": result.best_epoch, "best_top1": result.best_top1, "test": metrics}
        manifest = artifacts.write_manifest(out_dir, STEP, k, meta)
        checkpoint.unlink(missing_ok=True)
    return manifest


def cached(cfg: StudyConfig, data: common.Manifest) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store."""
    return common.run_in_store(cfg, STEP, key(cfg, data), lambda out: run(cfg, data, out))


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key)


def main() -> None:
    cfg, _ = common.cli(__doc__)
    data = artifacts.read_manifest(common.dvc_dir("prepare_data"))
    run(cfg, data, common.dvc_dir(STEP))


if __name__ == "__main__":
    main()
