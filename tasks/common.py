"""What every step shares: cache keys, the content-addressed store, the DVC command line.

A step's cache key hashes its name, the slice of the validated config it reads, the
content hashes of its inputs and the code it runs (`tasks.code_identity`: the import
closure of the step's module and of the plugin modules its config selects).
The Prefect front door writes each artifact to `<runtime.store>/<step>/<key>`, so a
cache hit can only ever hand back the artifact built from those inputs; the DVC front
door writes to the fixed paths of `dvc.yaml` and lets DVC do the caching.
"""
from __future__ import annotations

import argparse
import atexit
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from kdlib import artifacts, time_account
from kdlib.config import MAIN_TEACHER, ConfigError, StudyConfig, load_config
from kdlib.time_account import TimeAccount
from tasks import time_ledger
from tasks.code_identity import code_digest

Manifest = dict[str, Any]


def cache_key(step: str, config_slice: Any, inputs: Iterable[Manifest], code_roots: tuple[str, ...]) -> str:
    """The key of one step run; `code_roots` are the modules it runs (`tasks.code_identity`)."""
    return artifacts.hash_json(
        {
            "step": step,
            "config": config_slice,
            "inputs": [m["files"] for m in inputs],
            "code": code_digest(code_roots),
        }
    )[:24]


TIMINGS = ".timings.json"
"""Where a step keeps its wall-clock times, beside its files: the leading dot keeps it out of
the manifest, and `.dvcignore` keeps it out of DVC's hash, so re-running a step on the same
inputs writes a byte-identical artifact."""


def write_timings(out_dir: Path, timings: list[dict[str, float]]) -> None:
    artifacts.write_json(Path(out_dir) / TIMINGS, timings)


def print_training_time(label: str, timings: list[dict[str, float]]) -> float:
    """Say in the step's log how long this process trained (the epochs it ran, diagnostics
    included; a resumed run's earlier epochs are not counted); returns the seconds."""
    seconds = sum(t["train_seconds"] + t.get("test_seconds", 0.0) + t.get("diagnose_seconds", 0.0) for t in timings)
    print(f"{label}: trained {len(timings)} epoch(s) in {seconds:.2f} s", flush=True)
    return seconds


def student_entry(method: str, seed: int) -> str:
    """A student's name in DVC stage names (`train_student@<entry>`) and in time accounts."""
    return f"{method}-{seed}"


def store_dir(cfg: StudyConfig, step: str, key: str) -> Path:
    return Path(cfg.runtime.store) / step / key


def checkpoint_path(cfg: StudyConfig, step: str, key: str) -> Path:
    """Where a training step keeps its per-epoch checkpoint: keyed like its artifact, so
    re-running the same command (either front door) resumes, and other inputs never do.
    Hold `artifacts.exclusive(path.with_suffix(".lock"))` while using it. The file carries
    its sha256 (`artifacts.save_checkpoint`); a damaged one is moved to
    `<runtime.store>/quarantine/checkpoints/<step>/<key>.pt-<UTC time>` and training starts
    from scratch (`kdlib.train.fit`)."""
    return Path(cfg.runtime.store) / "checkpoints" / step / f"{key}.pt"


def write_roots(cfg: StudyConfig) -> tuple[Path, Path]:
    """Where a step may write: the project directory (the current one) and the study's store."""
    return Path.cwd(), Path(cfg.runtime.store)


def run_in_store(cfg: StudyConfig, step: str, key: str, body: Callable[[Path], Manifest], entry: str = "") -> Manifest:
    """Reuse the artifact folder of this key if it is complete, else (re)build it, under a lock.

    A folder that is there but incomplete or damaged (no manifest, a manifest of the wrong
    shape, a file that fails its hash) is moved to `<store>/quarantine/<step>/<key>-<UTC time>`
    (`artifacts.quarantine`, under the folder's lock) and rebuilt; nothing is deleted.
    Sets torch's threads first (on a Dask worker this is the first code of the study that
    runs), and allows writes only under `write_roots` while the step runs: each task of the
    flow runs here, so this is where the flow's tasks set the roots (scoped to the task, so
    they never outlive it in the caller's thread).
    """
    setup_torch(cfg)
    out_dir = store_dir(cfg, step, key)
    account, reused = TimeAccount(step, entry), False
    try:
        with time_account.opened(account), artifacts.writes_under(*write_roots(cfg)), \
                artifacts.exclusive(out_dir.parent / f".{key}.lock"):
            try:
                manifest = artifacts.read_manifest(out_dir)
            except FileNotFoundError:
                problem = "has no manifest.json (its step did not finish)"
            except ValueError as err:
                problem = f"is damaged ({err})"
            else:
                print(f"{step}: reusing {out_dir}")
                reused = True
                return manifest
            if os.path.lexists(out_dir):
                artifacts.quarantine(out_dir, problem, root=Path(cfg.runtime.store))
            return body(out_dir)
    finally:
        time_ledger.write(time_ledger.prefect_session(), account, cached=reused)


def result_storage(cfg: StudyConfig) -> Any:
    """Prefect result storage rooted at the study's artifact store (see `StoreCachePolicy`).

    Prefect wants result storage saved server-side; the block's name is derived from the
    store's path, so every run on the same store shares one block.
    """
    from prefect.filesystems import LocalFileSystem

    basepath = str(Path(cfg.runtime.store).resolve())
    storage = LocalFileSystem(basepath=basepath)
    storage.save(f"kdflow-store-{hashlib.sha256(basepath.encode()).hexdigest()[:12]}", overwrite=True)
    return storage


def prefect_task(fn: Callable[..., Manifest], step: str, key_fn: Callable[..., str], **options: Any) -> Any:
    """`fn` as a cached Prefect task of `step`.

    Built on demand by each step's `prefect_task()`, so the DVC entry points never pay
    for importing Prefect. Results are JSON manifests, never pickles.
    """
    from prefect import task

    from tasks.cache_policy import StoreCachePolicy

    return task(
        fn, name=step, task_run_name=options.pop("task_run_name", step),
        cache_policy=StoreCachePolicy(step=step, key_fn=key_fn), persist_result=True, result_serializer="json", **options,
    )


def setup_torch(cfg: StudyConfig) -> None:
    torch.set_num_threads(cfg.runtime.threads)


# The fixed artifact paths of the DVC front door (must match dvc.yaml).
def dvc_dir(step: str, method: str | None = None, seed: int | None = None, teacher: str = MAIN_TEACHER) -> Path:
    """`teacher` names the teacher of train_teacher / finetune_teacher / cache_logits: the
    extra and fine-tuned ones live in artifacts/teachers/<name>, every logit cache in
    artifacts/logits/<name> (one folder the students' DVC stages depend on)."""
    if step == "cache_logits":
        return Path("artifacts/logits") / teacher
    if step in ("train_teacher", "finetune_teacher") and teacher != MAIN_TEACHER:
        return Path("artifacts/teachers") / teacher
    base = {
        "prepare_data": "artifacts/data",
        "train_teacher": "artifacts/teacher",
        "train_student": "artifacts/students",
        "evaluate": "artifacts/evaluations",
        "aggregate": "results",
    }[step]
    path = Path(base)
    return path / method / f"seed{seed}" if method is not None else path


def model_shape(data: Manifest) -> tuple[int, int]:
    """(in_channels, image_size) to build a model for prepare_data's output: the images' channels
    and size; for token windows 1 and the context length (a token arch's `image_size`)."""
    meta = data["meta"]
    if meta.get("kind") == "tokens":
        return 1, meta["context"]
    return meta["shape"][0], meta["shape"][-1]


def dvc_input(step: str, method: str | None = None, seed: int | None = None, teacher: str = MAIN_TEACHER) -> Manifest:
    """The verified manifest of an upstream DVC output; a missing, truncated or altered one
    stops the stage (exit 2) instead of being used.

    `dvc repro` never gets here with a damaged input: it sees the modified output, restores
    it from its cache (whose objects it re-hashes) or re-runs the stage that makes it. A
    single stage (`dvc repro -s`, `python -m tasks.<step>`) skips that, so this says how to fix it.
    """
    folder = dvc_dir(step, method, seed, teacher)
    try:
        return artifacts.read_manifest(folder)
    except (FileNotFoundError, ValueError) as err:
        stage = step if method is None else f"{step}@{method}-{seed}"
        print(f"{err}\nrun `dvc repro` (not -s): DVC restores {folder} from its cache or re-runs stage {stage}",
              file=sys.stderr)
        raise SystemExit(2) from None


def cli(
    step: str, description: str, per_student: bool = False, per_teacher: bool = False
) -> tuple[StudyConfig, argparse.Namespace]:
    """Parse `python -m tasks.<step>` arguments and load the study; bad config exits 2.

    Opens the process's time account (`tasks.time_ledger.dvc_stage_account`), written into
    its `dvc repro`'s session when the process exits, however it exits."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="study file (default: params.yaml)")
    if per_student:
        parser.add_argument("--method", required=True)
        parser.add_argument("--seed", required=True, type=int)
    if per_teacher:
        parser.add_argument("--teacher", default=MAIN_TEACHER, help=f"a teacher's name (default: {MAIN_TEACHER})")
    args = parser.parse_args()
    entry = student_entry(args.method, args.seed) if per_student else getattr(args, "teacher", MAIN_TEACHER)
    session, account = time_ledger.dvc_stage_account(step, "" if entry == MAIN_TEACHER else entry)
    time_account.activate(account)
    atexit.register(time_ledger.write, session, account)
    try:
        cfg = load_config(args.params)
    except ConfigError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    if per_student and args.method not in cfg.students.methods:
        print(f"--method {args.method!r} is not in students.methods {cfg.students.methods}", file=sys.stderr)
        raise SystemExit(2)
    if per_teacher and args.teacher not in cfg.teacher_names():
        print(f"--teacher {args.teacher!r} is not a declared teacher: {', '.join(cfg.teacher_names())}", file=sys.stderr)
        raise SystemExit(2)
    setup_torch(cfg)
    # a `python -m tasks.<step>` process (a DVC stage) writes only in the project and the store
    artifacts.allow_writes_under(*write_roots(cfg))
    return cfg, args
