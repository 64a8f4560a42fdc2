"""prepare_data: build the data set named by `data` once, as one tensor file."""
from __future__ import annotations

from pathlib import Path
from typing import Any


from kdlib import artifacts
from kdlib.config import StudyConfig
from kdlib.data import Dataset, load_digits, make_synthetic, save_dataset
from tasks import common

STEP = "prepare_data"
CODE = ("tasks/prepare_data.py", "kdlib/data.py")
DATASET = "dataset.pt"


def key(cfg: StudyConfig) -> str:
    return common.cache_key(STEP, cfg.data.model_dump(), [], CODE)


def build(cfg: StudyConfig) -> Dataset:
    d = cfg.data
    if d.source == "synthetic":
        return make_synthetic(d.seed, d.train_per_class, d.test_per_class, d.image_size, difficulty=d.difficulty)
    return load_digits(d.seed, d.test_fraction)


def run(cfg: StudyConfig, out_dir: Path) -> common.Manifest:
    ds = build(cfg)
    save_dataset(ds, Path(out_dir) / DATASET)
    meta = {
        "name": ds.name,
        "num_classes": ds.num_classes,
        "num_train": len(ds.x_train),
        "num_test": len(ds.x_test),
        "shape": list(ds.x_train.shape[1:]),
    }
    print(f"prepare_data: {ds.name}, {meta['num_train']} train / {meta['num_test']} test images of shape {meta['shape']}")
    return artifacts.write_manifest(out_dir, STEP, key(cfg), meta)


def cached(cfg: StudyConfig) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store."""
    return common.run_in_store(cfg, STEP, key(cfg), lambda out: run(cfg, out))


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key)


def main() -> None:
    cfg, _ = common.cli(__doc__)
    run(cfg, common.dvc_dir(STEP))


if __name__ == "__main__":
    main()
