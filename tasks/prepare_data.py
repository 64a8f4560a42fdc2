"""prepare_data: build the data set named by `data` once, as one tensor file."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kdlib import artifacts, time_account
from kdlib.config import StudyConfig
from kdlib.data.dataset import Dataset, save_dataset
from kdlib.data.sources.base import source_class
from kdlib.data.tokens import TokenDataset
from tasks import common

STEP = "prepare_data"
DATASET = "dataset.pt"
SOURCE_DIGESTS = ".source-digests.json"  # in the store: sha256 per data file, by (path, size, mtime)


def config_slice(cfg: StudyConfig) -> dict[str, Any]:
    """The `data` section, plus the content digest of `data.path` when it names a file or
    folder: replacing a data set at the same path changes the key. (A `data.url` download
    is pinned by its official MD5.) Plus the source's own `content_digest` where it has
    one (text: the corpus that ships with this Python, the tokenizer file)."""
    sliced = cfg.data.model_dump()
    if cfg.data.path is not None:
        memo = Path(cfg.runtime.store) / SOURCE_DIGESTS
        sliced["content"] = artifacts.content_digest(Path(cfg.data.path), memo)
    source_content = source_class(cfg.data.source).content_digest(cfg.data)
    if source_content is not None:
        sliced["source_content"] = source_content
    return sliced


def code_roots(cfg: StudyConfig) -> tuple[str, ...]:
    """This step, the source base and the module of the source `data.source` names."""
    return ("tasks.prepare_data", "kdlib.data.sources.base", source_class(cfg.data.source).__module__)


def key(cfg: StudyConfig) -> str:
    return common.cache_key(STEP, config_slice(cfg), [], code_roots(cfg))


def build(cfg: StudyConfig) -> Dataset | TokenDataset:
    """The data set of the source `data.source` names (see `kdlib.data.sources`)."""
    return source_class(cfg.data.source).build(cfg.data)


def run(cfg: StudyConfig, out_dir: Path) -> common.Manifest:
    k = key(cfg)  # reads data.path's digest: a data folder it cannot read fails before anything is written
    with time_account.charge("data"):
        ds = build(cfg)
    save_dataset(ds, Path(out_dir) / DATASET)
    meta = {
        "name": ds.name,
        "num_classes": ds.num_classes,
        "num_train": len(ds.x_train),
        "num_test": len(ds.x_test),
        "shape": list(ds.x_train.shape[1:]),
    }
    if isinstance(ds, TokenDataset):
        meta.update(kind="tokens", num_val=len(ds.x_val), context=ds.context,
                    tokens={s: getattr(ds, f"x_{s}").shape[0] * (ds.context + 1) for s in ("train", "val", "test")})
        print(f"prepare_data: {ds.name}, {meta['num_train']} train / {meta['num_val']} validation / {meta['num_test']} "
              f"test windows of {ds.context} tokens ({meta['tokens']['train']} training tokens), vocabulary {ds.num_classes}")
    else:
        print(f"prepare_data: {ds.name}, {meta['num_train']} train / {meta['num_test']} test images of shape {meta['shape']}")
    return artifacts.write_manifest(out_dir, STEP, k, meta)


def cached(cfg: StudyConfig) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store."""
    return common.run_in_store(cfg, STEP, key(cfg), lambda out: run(cfg, out))


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key)


def main() -> None:
    cfg, args = common.cli(STEP, __doc__)
    try:
        run(cfg, common.dvc_dir(STEP))  # builds the data set first: nothing is written before it exists
    except ValueError as err:  # a bad data source (kdlib.data.sources.base.DataSourceError, ...): it names the file
        print(f"cannot build the data set of {args.params}:\n  {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
