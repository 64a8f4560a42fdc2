"""finetune_teacher: a fine-tuned copy of the trained teacher (MCMI, or CE alone), by name.

Each entry of `finetuned_teachers` starts from `teacher`'s weights and is fine-tuned with
its `regularizer` and `schedule` (`kdlib.mcmi`); its logits are then cached like any
teacher's, so students can distil from it (`teacher: <name>` in a method entry). The
name is not part of the key: two entries with the same settings share one artifact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdlib import artifacts
from kdlib.config import StudyConfig
from kdlib.data.dataset import load_dataset
from kdlib.mcmi import FinetuneSettings, MCMIFinetune
from kdlib.train import fit, resolve_device
from tasks import common, tracking
from tasks.train_teacher import load_teacher, write_teacher

STEP = "finetune_teacher"
CODE_ROOTS = ("tasks.finetune_teacher",)


def config_slice(cfg: StudyConfig, name: str) -> dict:
    return {"finetune": cfg.finetuned_teachers[name].model_dump(), "augment": cfg.augment.model_dump()}


def key(cfg: StudyConfig, name: str, data: common.Manifest, teacher: common.Manifest) -> str:
    return common.cache_key(STEP, config_slice(cfg, name), [data, teacher], CODE_ROOTS)


def run(
    cfg: StudyConfig, name: str, data: common.Manifest, teacher: common.Manifest, out_dir: Path,
    parent_run_id: str | None = None,
) -> common.Manifest:
    """Fine-tune the trained `teacher` (its manifest) as `finetuned_teachers.<name>` says; with
    `parent_run_id`, inside its live MLflow run nested there."""
    ft = cfg.finetuned_teachers[name]
    k = key(cfg, name, data, teacher)
    checkpoint = common.checkpoint_path(cfg, STEP, k)
    ds = load_dataset(Path(data["dir"]) / "dataset.pt")
    model = load_teacher(cfg, data, teacher)
    method = MCMIFinetune(FinetuneSettings(regularizer=ft.regularizer, lam=ft.lam), ds)
    torch.manual_seed(ft.seed)
    arch = teacher["meta"]["arch"]
    tags = {"role": "teacher", "teacher": name, "made": "finetuned", "base_key": teacher["key"]}
    with artifacts.exclusive(checkpoint.with_suffix(".lock")), tracking.step_run(
        cfg, parent_run_id, STEP, k, tracking.teacher_run_name(name, arch), tracking.teacher_params(cfg, name), tags,
    ) as live:
        result = fit(
            model, method, ds, ft.schedule, ft.seed, cfg.augment.model_copy(update={"seed": ft.seed}),
            device=resolve_device(cfg.runtime.device), label=f"{name} ({ft.regularizer})", checkpoint=checkpoint,
            on_epoch=live.epoch,
        )
        common.print_training_time(f"finetune_teacher {name}", result.timings)
        meta = {
            "arch": arch, "base_key": teacher["key"], "regularizer": ft.regularizer,
            "lam": ft.lam if ft.regularizer == "mcmi" else None,
        }
        manifest = write_teacher(cfg, model, ds, result, out_dir, STEP, k, meta, live)
        checkpoint.unlink(missing_ok=True)
    return manifest


def cached(
    cfg: StudyConfig, name: str, data: common.Manifest, teacher: common.Manifest, parent_run_id: str | None = None,
) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store (`parent_run_id`: see `run`)."""
    return common.run_in_store(
        cfg, STEP, key(cfg, name, data, teacher), lambda out: run(cfg, name, data, teacher, out, parent_run_id), entry=name,
    )


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key, task_run_name="finetune_teacher[{name}]")


def main() -> None:
    cfg, args = common.cli(STEP, __doc__, per_teacher=True)
    if args.teacher not in cfg.finetuned_teachers:
        raise SystemExit(f"--teacher {args.teacher!r} is not an entry of finetuned_teachers: {', '.join(cfg.finetuned_teachers)}")
    data = common.dvc_input("prepare_data")
    teacher = common.dvc_input("train_teacher")
    with tracking.dvc_pipeline(cfg) as parent:
        run(cfg, args.teacher, data, teacher, common.dvc_dir(STEP, teacher=args.teacher), parent)


if __name__ == "__main__":
    main()
