"""cache_logits: the teacher's logits (dense; sparse top-K with `logits.topk`), feature norms and class means on every (epoch, sample) view the students will see; for a token study, its top-K logits and log-normaliser per position (`kdlib.token_cache`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdlib import artifacts, time_account
from kdlib.config import StudyConfig
from kdlib.data.dataset import load_dataset
from kdlib.data.tokens import TokenDataset
from kdlib.logit_cache import LogitCache, compute_cache, write_cache
from kdlib.token_cache import DEFAULT_TOPK, TEST_TOKENS, TOKENS, TokenCache, write_token_cache
from tasks import common
from tasks.train_teacher import load_teacher

STEP = "cache_logits"
CODE_ROOTS = ("tasks.cache_logits",)


def config_slice(cfg: StudyConfig) -> dict:
    """Images: the views of every student epoch. Tokens: the windows, once (text is not augmented)."""
    if cfg.data.kind == "tokens":
        return {"logits": cfg.logits.model_dump()}
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
    if ds.kind == "tokens":
        return run_tokens(cfg, data, teacher, ds, model, out_dir)
    with time_account.charge("compute"):
        cache = compute_cache(model, ds, cfg.augment, cfg.students.schedule.epochs, cfg.logits.batch_size, topk=cfg.logits.topk)
    meta = write_cache(out_dir, cache)
    meta.update(teacher_key=teacher["key"], augment=cfg.augment.model_dump())
    return artifacts.write_manifest(out_dir, STEP, key(cfg, data, teacher), meta)


def run_tokens(
    cfg: StudyConfig, data: common.Manifest, teacher: common.Manifest, ds: TokenDataset, model: torch.nn.Module, out_dir: Path,
) -> common.Manifest:
    """The top-K token cache (`kdlib.token_cache`) of the training windows, which students read,
    and of the test windows, which evaluation compares them with; K = `logits.topk` (32 unset)."""
    k = cfg.logits.topk or DEFAULT_TOPK
    batch = max(1, cfg.logits.batch_size // ds.context)  # logits.batch_size counts rows: positions here
    with time_account.charge("compute"):
        train = write_token_cache(model, ds.x_train, k, out_dir, batch, file=TOKENS)
        test = write_token_cache(model, ds.x_test, k, out_dir, batch, file=TEST_TOKENS)
    meta = {"kind": "tokens", "train": train, "test": test, "topk": k, "bytes_per_token": train["bytes_per_token"],
            "dense_bytes_per_token": train["dense_bytes_per_token"], "teacher_key": teacher["key"]}
    return artifacts.write_manifest(out_dir, STEP, key(cfg, data, teacher), meta)


def open_cache(manifest: common.Manifest) -> LogitCache | TokenCache:
    """The read side of a cache this step wrote: an image study's `LogitCache`, a token study's `TokenCache`."""
    if manifest["meta"].get("kind") == "tokens":
        return TokenCache(Path(manifest["dir"]))
    return LogitCache(Path(manifest["dir"]))


def cached(cfg: StudyConfig, data: common.Manifest, teacher: common.Manifest) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store."""
    return common.run_in_store(cfg, STEP, key(cfg, data, teacher), lambda out: run(cfg, data, teacher, out))


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key)


def main() -> None:
    cfg, args = common.cli(STEP, __doc__, per_teacher=True)
    data = common.dvc_input("prepare_data")
    producer = "finetune_teacher" if args.teacher in cfg.finetuned_teachers else "train_teacher"
    teacher = common.dvc_input(producer, teacher=args.teacher)
    run(cfg, data, teacher, common.dvc_dir(STEP, teacher=args.teacher))


if __name__ == "__main__":
    main()
