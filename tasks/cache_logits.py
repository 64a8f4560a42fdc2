"""cache_logits: the teacher's logits (dense; sparse top-K with `logits.topk`), feature norms and class means on every (epoch, sample) view the students will see."""
from __future__ import annotations

from pathlib import Path
from typing import Any


from kdlib import artifacts
from kdlib.config import StudyConfig
from kdlib.data.dataset import load_dataset
from kdlib.logit_cache import compute_cache, write_cache
from tasks import common
from tasks.train_teacher import load_teacher

STEP = "cache_logits"
CODE_ROOTS = ("tasks.cache_logits",)


def config_slice(cfg: StudyConfig) -> dict:
    return {
        "logits": cfg.logits.model_dump(),
        "augment": cfg.augment.model_dump(),
        "epochs": cfg.students.schedule.epochs,
    }


def key(cfg: StudyConfig, data: common.Manifest, teacher: common.Manifest) -> str:
    return common.cache_key(STEP, config_slice(cfg), [data, teacher], CODE_ROOTS)


def run(cfg: StudyConfig, data: common.Manifest, teacher: common.Manifest, out_dir: Path) -> common.Manifest:
    ds = load_dataset(Path(data["dir"]) / "dataset.pt")
    model = load_teacher(cfg, data, teacher)
    cache = compute_cache(model, ds, cfg.augment, cfg.students.schedule.epochs, cfg.logits.batch_size, topk=cfg.logits.topk)
    meta = write_cache(out_dir, cache)
    meta.update(teacher_key=teacher["key"], augment=cfg.augment.model_dump())
    return artifacts.write_manifest(out_dir, STEP, key(cfg, data, teacher), meta)


def cached(cfg: StudyConfig, data: common.Manifest, teacher: common.Manifest) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store."""
    return common.run_in_store(cfg, STEP, key(cfg, data, teacher), lambda out: run(cfg, data, teacher, out))


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key)


def main() -> None:
    cfg, args = common.cli(__doc__, per_teacher=True)
    data = common.dvc_input("prepare_data")
    producer = "finetune_teacher" if args.teacher in cfg.finetuned_teachers else "train_teacher"
    teacher = common.dvc_input(producer, teacher=args.teacher)
    run(cfg, data, teacher, common.dvc_dir(STEP, teacher=args.teacher))


if __name__ == "__main__":
    main()
