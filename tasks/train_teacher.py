"""train_teacher: train a teacher once with cross-entropy on its own replayed views.

`teacher` is trained under the name "teacher"; each entry of `teachers` (extra teachers,
for multi_teacher_kd) by the same code under its own name. A name is not part of the key:
two teachers with the same config share one artifact in the store.

A teacher that is not trained here is this step's output all the same, with the same files
(weights, an empty history, test metrics): `checkpoint`, a released CRD / mdistiller / DHKD
teacher, loaded and keyed by the file's content (not its path); `untrained`, the random
initialisation of its seed (Sarnthein et al. 2023). A checkpoint that cannot be that teacher
stops the step (exit 2), naming what does not fit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import sys

import torch

from kdlib import artifacts
from kdlib.config import MAIN_TEACHER, StudyConfig, TeacherConfig
from kdlib.data.dataset import Dataset, load_dataset
from kdlib.evaluation import evaluate_model
from kdlib.models import build_model
from kdlib.models.checkpoint import CheckpointError, load_checkpoint_model
from kdlib.models.init import initial_model
from kdlib.objective import CrossEntropy
from kdlib.train import FitResult, Speed, fit, resolve_device
from tasks import common, tracking

STEP = "train_teacher"
CODE_ROOTS = ("tasks.train_teacher",)
MODEL, HISTORY = "model.pt", "history.json"
CHECKPOINT_DIGESTS = ".checkpoint-digests.json"  # in the store: sha256 per checkpoint file, by (path, size, mtime)


def teacher_config(cfg: StudyConfig, name: str) -> TeacherConfig:
    """The config of a teacher made by this step: `teacher`, or an entry of `teachers`."""
    return cfg.teacher if name == MAIN_TEACHER else cfg.teachers[name]


def config_slice(cfg: StudyConfig, name: str = MAIN_TEACHER) -> dict:
    """What the teacher is made from: a trained one's config and the augmentation; a released
    checkpoint's arch and the file's content digest (the same file elsewhere is the same
    teacher; a file replaced at the same path is another); an untrained one's arch and seed."""
    tc = teacher_config(cfg, name)
    if tc.checkpoint is not None:
        digest = artifacts.content_digest(Path(tc.checkpoint), Path(cfg.runtime.store) / CHECKPOINT_DIGESTS)
        return {"teacher": {"arch": tc.arch, "checkpoint_content": digest}}
    if tc.untrained:
        return {"teacher": {"arch": tc.arch, "seed": tc.seed, "untrained": True}}
    return {"teacher": tc.model_dump(), "augment": cfg.augment.model_dump()}


def key(cfg: StudyConfig, data: common.Manifest, name: str = MAIN_TEACHER) -> str:
    return common.cache_key(STEP, config_slice(cfg, name), [data], CODE_ROOTS)


def made(manifest: common.Manifest) -> str:
    """How a teacher artifact was made: `trained`, `checkpoint` (a released file), `untrained`
    (its seeded initialisation) or `finetuned` (by finetune_teacher, from `teacher`)."""
    return "finetuned" if manifest["step"] == "finetune_teacher" else manifest["meta"].get("made", "trained")


def load_teacher(cfg: StudyConfig, data: common.Manifest, teacher: common.Manifest) -> torch.nn.Module:
    """A teacher (trained, loaded, untrained or fine-tuned), in eval mode, on CPU; its arch is in its manifest."""
    meta = data["meta"]
    model = build_model(teacher["meta"]["arch"], meta["num_classes"], *common.model_shape(data))
    model.load_state_dict(artifacts.load_tensors(Path(teacher["dir"]) / MODEL))
    return model.eval()


def run(
    cfg: StudyConfig, data: common.Manifest, out_dir: Path, name: str = MAIN_TEACHER, parent_run_id: str | None = None,
) -> common.Manifest:
    """Make the teacher `name`; with `parent_run_id`, inside its live MLflow run nested there."""
    sliced = config_slice(cfg, name)
    k = common.cache_key(STEP, sliced, [data], CODE_ROOTS)
    tc = teacher_config(cfg, name)
    ds = load_dataset(Path(data["dir"]) / "dataset.pt")
    made = "untrained" if tc.untrained else "checkpoint" if tc.checkpoint is not None else "trained"
    with tracking.step_run(cfg, parent_run_id, STEP, k, tracking.teacher_run_name(name, tc.arch),
                           tracking.teacher_params(cfg, name), {"role": "teacher", "teacher": name, "made": made}) as live:
        if tc.untrained:
            print(f"train_teacher: {name} is the untrained {tc.arch} of seed {tc.seed}")
            meta = {"arch": tc.arch, "made": "untrained", "seed": tc.seed}
            model = initial_model(tc.arch, tc.seed, ds.num_classes, ds.num_channels, ds.image_size)
            return write_teacher(cfg, model, ds, None, out_dir, STEP, k, meta, live)
        if tc.checkpoint is not None:
            model, digest = load_checkpoint_model(
                tc.arch, ds.num_classes, ds.num_channels, ds.image_size, tc.checkpoint, tc.checkpoint_sha256
            )
            if digest != sliced["teacher"]["checkpoint_content"]:  # the bytes read are the ones keyed
                raise CheckpointError(f"checkpoint {tc.checkpoint} changed while {name} was being made from it; run again")
            print(f"train_teacher: {name} is the released {tc.arch} of {tc.checkpoint} (sha256 {digest})")
            meta = {"arch": tc.arch, "made": "checkpoint", "checkpoint_sha256": digest}
            return write_teacher(cfg, model, ds, None, out_dir, STEP, k, meta, live)
        checkpoint = common.checkpoint_path(cfg, STEP, k)
        torch.manual_seed(tc.seed)
        model = build_model(tc.arch, ds.num_classes, ds.num_channels, ds.image_size)
        with artifacts.exclusive(checkpoint.with_suffix(".lock")):
            result = fit(
                model, CrossEntropy(), ds, tc.schedule, tc.seed,
                # the teacher's own views come from its seed; the students replay augment.seed
                cfg.augment.model_copy(update={"seed": tc.seed}),
                device=resolve_device(cfg.runtime.device), label=f"{name} {tc.arch}", checkpoint=checkpoint,
                speed=Speed.for_device(resolve_device(cfg.runtime.device), cfg.runtime.compile), on_epoch=live.epoch,
            )
            common.print_training_time(f"train_teacher {name}", result.timings)
            manifest = write_teacher(cfg, model, ds, result, out_dir, STEP, k, {"arch": tc.arch, "made": "trained"}, live)
            checkpoint.unlink(missing_ok=True)
        return manifest


def write_teacher(
    cfg: StudyConfig, model: torch.nn.Module, ds: Dataset, result: FitResult | None, out_dir: Path, step: str, k: str,
    meta: dict[str, Any], live: tracking.StepRun | None = None,
) -> common.Manifest:
    """Write a teacher's weights, history and test metrics, then its manifest (train_teacher
    and finetune_teacher share this layout, so `load_teacher` reads both). `result` None: a
    teacher not trained here, with an empty history, best epoch 0 and its test top-1 as best.
    `live`: its MLflow run, which gets the test metrics as `final/*` and the small files."""
    model.cpu()
    metrics = evaluate_model(model, ds, cfg.evaluation.ece_bins)[0]
    if result is None:
        result = FitResult(history=[], best_epoch=0, best_top1=metrics["top1"], timings=[])
    artifacts.save_tensors(Path(out_dir) / MODEL, model.state_dict())
    artifacts.write_json(Path(out_dir) / HISTORY, result.history)
    common.write_timings(out_dir, result.timings)
    meta = {**meta, "best_epoch": result.best_epoch, "best_top1": result.best_top1, "test": metrics}
    manifest = artifacts.write_manifest(out_dir, step, k, meta)
    if live is not None:
        live.done()
        live.final(metrics | {"best_top1": result.best_top1, "best_epoch": result.best_epoch}, step=len(result.history))
        live.files([Path(out_dir) / name for name in (HISTORY, common.TIMINGS, artifacts.MANIFEST)])
        live.tags({"artifact_dir": manifest["dir"]})
    return manifest


def cached(
    cfg: StudyConfig, data: common.Manifest, name: str = MAIN_TEACHER, parent_run_id: str | None = None,
) -> common.Manifest:
    """Build (or reuse) this step's artifact in the content-addressed store (`parent_run_id`: see `run`)."""
    return common.run_in_store(cfg, STEP, key(cfg, data, name), lambda out: run(cfg, data, out, name, parent_run_id),
                               entry="" if name == MAIN_TEACHER else name)


def run_name() -> str:
    """`train_teacher` for `teacher` (as before extra teachers existed), `train_teacher[<name>]` for the others."""
    from prefect.runtime import task_run

    name = task_run.parameters.get("name", MAIN_TEACHER)
    return STEP if name == MAIN_TEACHER else f"{STEP}[{name}]"


def prefect_task() -> Any:
    """This step as a cached Prefect task (see `common.prefect_task`)."""
    return common.prefect_task(cached, STEP, key, task_run_name=run_name)


def main() -> None:
    cfg, args = common.cli(STEP, __doc__, per_teacher=True)
    if args.teacher != MAIN_TEACHER and args.teacher not in cfg.teachers:
        raise SystemExit(f"--teacher {args.teacher!r}: train_teacher trains `teacher` and the entries of `teachers`")
    data = common.dvc_input("prepare_data")
    try:
        with tracking.dvc_pipeline(cfg) as parent:
            run(cfg, data, common.dvc_dir(STEP, teacher=args.teacher), args.teacher, parent)
    except CheckpointError as err:
        field = "teacher" if args.teacher == MAIN_TEACHER else f"teachers.{args.teacher}"
        print(f"train_teacher: {field}.checkpoint: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
