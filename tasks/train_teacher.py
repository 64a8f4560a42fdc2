"""train_teacher: train a teacher once with cross-entropy on its own replayed views.

`teacher` is trained under the name "teacher"; each entry of `teachers` (extra teachers,
for multi_teacher_kd) by the same code under its own name. A name is not part of the key:
two teachers with the same config share one artifact in the store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdlib import artifacts
from kdlib.config import MAIN_TEACHER, StudyConfig, TeacherConfig
from kdlib.data.dataset import Dataset, load_dataset
from kdlib.metrics import evaluate_logits
from kdlib.models import build_model
from kdlib.objective import CrossEntropy
from kdlib.train import FitResult, Speed, fit, predict, resolve_device
from tasks import common

STEP = "train_teacher"
CODE_ROOTS = ("tasks.train_teacher",)
MODEL, HISTORY = "model.pt", "history.json"


def teacher_config(cfg: StudyConfig, name: str) -> TeacherConfig:
    """The config of a teacher trained from scratch: `teacher`, or an entry of `teachers`."""
    return cfg.teacher if name == MAIN_TEACHER else cfg.teachers[name]


def config_slice(cfg: StudyConfig, name: str = MAIN_TEACHER) -> dict:
    return {"teacher": teacher_config(cfg, name).model_dump(), "augment": cfg.augment.model_dump()}


def key(cfg: StudyConfig, data: common.Manifest, name: str = MAIN_TEACHER) -> str:
    return common.cache_key(STEP, config_slice(cfg, name), [data], CODE_ROOTS)


def load_teacher(cfg: StudyConfig, data: common.Manifest, teacher: common.Manifest) -> torch.nn.Module:
    """A trained (or fine-tuned) teacher, in eval mode, on CPU; its arch is in its manifest."""
    meta = data["meta"]
    model = build_model(teacher["meta"]["arch"], meta["num_classes"], meta["shape"][0], meta["shape"][-1])
    model.load_state_dict(artifacts.load_tensors(Path(teacher["dir"]) / MODEL))
    return model.eval()


def run(cfg: StudyConfig, data: common.Manifest, out_dir: Path, name: str = MAIN_TEACHER) -> common.Manifest:
    k = key(cfg, data, name)
    tc = teacher_config(cfg, name)
    checkpoint = common.checkpoint_path(cfg, STEP, k)
    ds = load_dataset(Path(data["dir"]) / "dataset.pt")
    torch.manual_seed(tc.seed)
    model = build_model(tc.arch, ds.num_classes, ds.num_channels, ds.image_size)
    with artifacts.exclusive(checkpoint.with_suffix(".lock")):
        result = fit(
            model, CrossEntropy(), ds, tc.schedule, tc.seed,
            # the teacher's own views come from its seed; the students replay augment.seed
            cfg.augment.model_copy(update={"seed": tc.seed}),
            device=resolve_device(cfg.runtime.device), label=f"{name} {tc.arch}", checkpoint=checkpoint,
            speed=Speed.for_device(resolve_device(cfg.runtime.device), cfg.runtime.compile),
        )
        manifest = write_teacher(cfg, model, ds, result, out_dir, STEP, k, {"arch": tc.arch})
        checkpoint.unlink(missing_ok=True)
    return manifest


def write_teacher(
    cfg: StudyConfig, model: torch.nn.Module, ds: Dataset, result: FitResult, out_dir: Path, step: str, k: str,
    meta: dict[str, Any],
) -> common.Manifest:
    """Write a trained teacher's weights, history and test metrics, then its manifest
    (train_teacher and finetune_teacher share this layout, so `load_teacher` reads both)."""
    model.cpu()
    metrics = evaluate_logits(predict(model, ds.x_test, ds), ds.y_test, ece_bins=cfg.evaluation.ece_bins)
    artifacts.save_tensors(Path(out_dir) / MODEL, model.state_dict())
    artifacts.write_json(Path(out_dir) / HISTORY, result.history)
    common.write_timings(out_dir, result.timings)
    meta = {**meta, "best_epoch": result.best_epoch, "best_top1": result.best_top1, "test": metrics}
    return artifacts.write_manifest(out_dir, step, k, meta)


def cached(cfg: StudyConfig, data: common.Manifest, name: str = MAIN_TEACHER) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store."""
    return common.run_in_store(cfg, STEP, key(cfg, data, name), lambda out: run(cfg, data, out, name))


def run_name() -> str:
    """`train_teacher` for `teacher` (as before extra teachers existed), `train_teacher[<name>]` for the others."""
    from prefect.runtime import task_run

    name = task_run.parameters.get("name", MAIN_TEACHER)
    return STEP if name == MAIN_TEACHER else f"{STEP}[{name}]"


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key, task_run_name=run_name)


def main() -> None:
    cfg, args = common.cli(__doc__, per_teacher=True)
    if args.teacher != MAIN_TEACHER and args.teacher not in cfg.teachers:
        raise SystemExit(f"--teacher {args.teacher!r}: train_teacher trains `teacher` and the entries of `teachers`")
    data = common.dvc_input("prepare_data")
    run(cfg, data, common.dvc_dir(STEP, teacher=args.teacher), args.teacher)


if __name__ == "__main__":
    main()
