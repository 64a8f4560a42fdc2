"""train_student: one student, one method entry, one seed, distilled from the logit cache.

A method that reads no teacher cache (`Method.needs_teacher` False: ce, zloss, ldr, uskd,
and bdkd, which trains a fresh `teacher.arch` network beside the student) never opens it:
its key leaves the cache's manifest out (bdkd's holds the online teacher's arch instead),
so a changed teacher does not retrain it, and it takes `logits=None`.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Any

import torch

from kdlib import artifacts, distributed
from kdlib.config import StudyConfig
from kdlib.data.dataset import load_dataset
from kdlib.diagnostics import Probe
from kdlib.logit_cache import LogitCache
from kdlib.token_cache import TokenCache
from kdlib.methods.base import build_method, method_class
from kdlib.metrics import topk_accuracy
from kdlib.models import build_model
from kdlib.models.init import initial_model, start_near
from kdlib.train import NonFiniteLossError, Speed, fit, predict, resolve_device
from tasks import common, tracking
from tasks.cache_logits import open_cache

STEP = "train_student"
MODEL, HISTORY, FAILURE = "model.pt", "history.json", "failure.json"


def trains_online_teacher(cfg: StudyConfig, method: str) -> bool:
    """True when the method entry trains its own teacher and reads no logit cache."""
    return method_class(cfg.method_settings(method).method).online_teacher


def reads_cache(cfg: StudyConfig, method: str) -> bool:
    """True when the method entry's student reads a teacher's logit cache while training."""
    return method_class(cfg.method_settings(method).method).needs_teacher


def config_slice(cfg: StudyConfig, method: str, seed: int) -> dict:
    sliced = {
        "arch": cfg.students.arch,
        "schedule": cfg.students.schedule.model_dump(),
        "augment": cfg.augment.model_dump(),
        "method": method,
        "settings": cfg.method_settings(method).model_dump(),
        "seed": seed,
        "diagnostics": cfg.evaluation.model_dump(include={"probe_size", "nc_every"}),
    }
    if trains_online_teacher(cfg, method):
        sliced["online_teacher"] = {"arch": cfg.teacher.arch}
    if cfg.students.init_from_teacher is not None:  # what the student starts from
        teacher = {"arch": cfg.teacher.arch, "seed": cfg.teacher.seed}
        sliced["init_from_teacher"] = {**cfg.students.init_from_teacher.model_dump(), "teacher": teacher}
    return sliced


Caches = common.Manifest | list[common.Manifest] | None
"""The logit cache manifest(s) a student reads: one, a list for a multi-teacher method (in
its `teachers` order), None for a method that reads no cache (`reads_cache`)."""


def cache_list(logits: Caches) -> list[common.Manifest]:
    return [] if logits is None else logits if isinstance(logits, list) else [logits]


def student_teachers(cfg: StudyConfig, method: str) -> list[str]:
    """Names of the teachers whose caches a method entry's student takes: the ones it reads
    (`Method.teacher_names`); none for a method that reads no cache (`reads_cache`)."""
    return build_method(method, cfg.method_settings(method)).teacher_names()


def code_roots(cfg: StudyConfig, method: str) -> tuple[str, ...]:
    """The modules a student of `method` runs: this step, the method base and the module
    that defines the entry's method (the losses and kernels it imports follow from it)."""
    return ("tasks.train_student", "kdlib.methods.base", method_class(cfg.method_settings(method).method).__module__)


def key(cfg: StudyConfig, method: str, seed: int, data: common.Manifest, logits: Caches) -> str:
    """The student's cache key: the caches it reads are inputs; any given to a method that
    reads none are ignored, so changing the teacher does not retrain it."""
    inputs = [data, *cache_list(logits)] if reads_cache(cfg, method) else [data]
    return common.cache_key(STEP, config_slice(cfg, method, seed), inputs, code_roots(cfg, method))


def teacher_views(caches: list[LogitCache | TokenCache], fields: tuple[str, ...], augment_seed: int) -> Any:
    """`fit`'s teacher views: one cache's reader, or the stacked (K, B, C) logits of several."""
    readers = [cache.reader(fields, augment_seed) for cache in caches]
    if len(readers) == 1:
        return readers[0]
    return lambda epoch, indices: torch.stack([read(epoch, indices) for read in readers])


def load_student(cfg: StudyConfig, data: common.Manifest, student: common.Manifest) -> torch.nn.Module:
    """The exported student (head 1 only), in eval mode, on CPU."""
    meta = data["meta"]
    model = build_model(cfg.students.arch, meta["num_classes"], *common.model_shape(data))
    model.load_state_dict(artifacts.load_tensors(Path(student["dir"]) / MODEL))
    return model.eval()


def run(
    cfg: StudyConfig, method: str, seed: int, data: common.Manifest, logits: Caches, out_dir: Path,
    parent_run_id: str | None = None,
) -> common.Manifest:
    """Train one student from the caches of `student_teachers(cfg, method)` (`Caches`); with
    `parent_run_id`, it trains inside its live MLflow run nested there (`tasks.tracking`)."""
    spec = build_method(method, cfg.method_settings(method))
    spec.use_kernels(cfg.runtime.kernels, resolve_device(cfg.runtime.device))
    if logits is None and spec.needs_teacher:
        raise ValueError(f"train_student {method!r}: no cache_logits manifest given; only a method that reads no cache runs without one")
    k = key(cfg, method, seed, data, logits)
    checkpoint = common.checkpoint_path(cfg, STEP, k)
    ds = load_dataset(Path(data["dir"]) / "dataset.pt")
    caches = [open_cache(m) for m in cache_list(logits)] if spec.needs_teacher else []
    cache = caches[0] if caches else None
    torch.manual_seed(seed)
    student = build_model(cfg.students.arch, ds.num_classes, ds.num_channels, ds.image_size)
    if cfg.students.init_from_teacher is not None:  # near `teacher`'s initialisation (kdlib.models.init)
        start = cfg.students.init_from_teacher
        teacher_init = initial_model(cfg.teacher.arch, cfg.teacher.seed, ds.num_classes, ds.num_channels, ds.image_size)
        start_near(student, teacher_init, start.noise, start.variance_preserving)
    if spec.online_teacher:
        model = spec.build(student, build_model(cfg.teacher.arch, ds.num_classes, ds.num_channels, ds.image_size))
    elif "feature_norms" in spec.cached:
        model = spec.build(student, cache.feature_dim)
    else:
        model = spec.build(student)
    meta = {
        "method": method,
        "seed": seed,
        "arch": cfg.students.arch,
        "settings": spec.settings.model_dump(),
        "teacher_key": cache_list(logits)[0]["meta"]["teacher_key"] if spec.needs_teacher else None,
        "teachers": spec.teacher_names(),
    }
    if spec.online_teacher:
        meta["online_teacher_arch"] = cfg.teacher.arch
    views = teacher_views(caches, spec.cached, cfg.augment.seed) if caches else None
    probe = Probe(
        spec, ds, cfg.augment, cfg.students.schedule.epochs, views,
        probe_size=cfg.evaluation.probe_size, nc_every=cfg.evaluation.nc_every,
    )
    device = resolve_device(cfg.runtime.device)
    if cfg.runtime.ddp:
        distributed.init_from_env(device)
    train = functools.partial(
        fit, model, spec, ds, cfg.students.schedule, seed, cfg.augment, teacher_views=views,
        device=device, label=f"{method} seed {seed}", checkpoint=checkpoint,
        diagnose=probe, speed=Speed.for_device(device, cfg.runtime.compile),
    )
    if not distributed.is_main():
        # DDP ranks > 0 train their shards and write nothing; rank 0 records a failure
        with contextlib.suppress(NonFiniteLossError):
            train()
        return {}
    tags = {"role": "student", "method": method, "seed": str(seed)}
    with artifacts.exclusive(checkpoint.with_suffix(".lock")), tracking.step_run(
        cfg, parent_run_id, STEP, k, f"{method} seed {seed}", tracking.student_params(cfg, method, seed), tags,
    ) as live:
        try:
            result = train(on_epoch=live.epoch)
        except NonFiniteLossError as err:
            # one diverged student must not stop the study: record the failure as its artifact
            print(f"train_student FAILED: {err}", file=sys.stderr)
            meta["failed"] = str(err)
            artifacts.write_json(Path(out_dir) / FAILURE, {"error": str(err)})
            live.fail(str(err))
        else:
            common.print_training_time(f"train_student {method} seed {seed}", result.timings)
            if spec.online_teacher:
                # the online teacher is not exported; its final test top-1 is kept beside the student's
                top1 = topk_accuracy(predict(model.teacher, ds.x_test, ds), ds.rows(ds.y_test), 1)
                result.history[-1]["online_teacher_test_top1"] = top1
                meta["online_teacher_top1"] = top1
            artifacts.save_tensors(Path(out_dir) / MODEL, spec.exported(model).cpu().state_dict())
            artifacts.write_json(Path(out_dir) / HISTORY, result.history)
            common.write_timings(out_dir, result.timings)
            meta.update(best_epoch=result.best_epoch, best_top1=result.best_top1)
        manifest = artifacts.write_manifest(out_dir, STEP, k, meta)
        checkpoint.unlink(missing_ok=True)
        live.done()
        live.files([Path(out_dir) / name for name in (HISTORY, FAILURE, common.TIMINGS, artifacts.MANIFEST)])
        live.tags({"artifact_dir": manifest["dir"]})
    return manifest


def cached(
    cfg: StudyConfig, method: str, seed: int, data: common.Manifest, logits: Caches, parent_run_id: str | None = None,
) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store; a reused one is
    not logged again (`parent_run_id`: see `run`)."""
    k = key(cfg, method, seed, data, logits)
    return common.run_in_store(cfg, STEP, k, lambda out: run(cfg, method, seed, data, logits, out, parent_run_id),
                               entry=common.student_entry(method, seed))


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key, task_run_name="train_student[{method}, seed {seed}]")


def main() -> None:
    cfg, args = common.cli(STEP, __doc__, per_student=True)
    data = common.dvc_input("prepare_data")
    # dvc.yaml lists artifacts/logits (every teacher's cache) for every student: a matrix
    # stage has one deps list; each reads only its own teachers' caches, none when it reads none
    caches = [common.dvc_input("cache_logits", teacher=name) for name in student_teachers(cfg, args.method)]
    logits = None if not caches else caches[0] if len(caches) == 1 else caches
    with tracking.dvc_pipeline(cfg) as parent:
        run(cfg, args.method, args.seed, data, logits, common.dvc_dir(STEP, args.method, args.seed), parent)


if __name__ == "__main__":
    main()
