"""MLflow side channel: a parent run per pipeline run, a live child run per computed step.

- The parent run is created when a pipeline run starts: by the flow (`kd_pipeline`) before
  any task, or, in the DVC front door, by the first stage that logs (`dvc_pipeline`, its id
  kept in `.kdflow/mlflow/dvc-parent.json` until `aggregate` ends it). Its name is the study
  and the start time; its description says what ran (study, data set, commit), its tags
  which front door (and the Prefect flow run), at the end the aggregate's key.
- Each step that computes a teacher, a fine-tuned teacher or a student logs to its own run
  while it trains (`step_run`): params at the start, each epoch's metrics as they happen
  (`step` = epoch, names `epoch/<history key>`), FINISHED / FAILED / KILLED at the end, the
  step's module as its source. `evaluate` adds `final/*` metrics to the student's run.
- A step served from a cache is not logged again: at the end (`publish`) the parent gets a
  tag `reused/<run name>` holding the id of the run that computed it and the artifact key.
- Runs are found by their `artifact_key` tag, so no run id is ever written into a hashed
  artifact: artifacts stay byte-identical whatever MLflow did.

MLflow is imported only here, and only when a run is logged: `import mlflow` costs seconds,
kdlib never needs it, and a step with tracking off never loads it. Logging is a side
channel: when MLflow fails, the step says so on stderr and goes on without it. This module
writes nothing into an artifact, so it is not part of any step's code identity
(`tasks.code_identity.SIDE_CHANNELS`): editing it re-runs nothing.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import getpass
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from kdlib import artifacts, time_account
from kdlib.config import StudyConfig
from kdlib.methods.base import build_method

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
"""MLflow 3's "Machine learning" experiment kind; without it the UI opens a GenAI page."""
DVC_PARENT = Path(".kdflow/mlflow/dvc-parent.json")
"""The DVC front door's open parent run: written by the first stage that logs, removed when
`aggregate` (or a failing stage) ends the run. `.kdflow/` is outside git and DVC."""
FRONT_DOORS = {"dvc": "`dvc repro`", "prefect": "the Prefect flow `kd-pipeline`"}
"""The `front_door` tag of a parent run, and how the description and the report name it."""
PARENT_RUN = "parent_run_id"
"""The keyword by which steps receive their parent run; never part of a cache key (`tasks.cache_policy`)."""


def tracking_uri(cfg: StudyConfig) -> str:
    """`sqlite:///relative.db` is resolved against the project (cwd), so every process agrees."""
    uri = cfg.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str((Path.cwd() / uri[len(prefix):]).resolve())
    return uri


def metric_safe(name: str) -> str:
    """MLflow keys cannot hold '+': `ce+binarykl_norm` is logged as `ce_plus_binarykl_norm`."""
    return name.replace("+", "_plus_")


def tag_key(name: str) -> str:
    """A run name as (part of) a tag key: MLflow keys hold letters, digits, `_ - . / :` and
    spaces only (`teacher second (mlp)` -> `teacher second mlp`, `+` -> `_plus_`)."""
    return re.sub(r"[^\w\-./: ]", "", metric_safe(name))


def ui_url(cfg: StudyConfig, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: the tracking server itself, or `make ui`'s address
    for a local store (`KDFLOW_MLFLOW_UI`, default http://127.0.0.1:5000)."""
    uri = tracking_uri(cfg)
    base = uri if uri.startswith(("http://", "https://")) else os.environ.get("KDFLOW_MLFLOW_UI", "http://127.0.0.1:5000")
    # MLflow 3 opens its GenAI pages unless the link asks for the "Model training" ones
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


@functools.lru_cache(maxsize=None)
def git_commit(root: str = ".") -> str:
    """`<sha>` of HEAD, `<sha>+dirty` with uncommitted changes to tracked files, or `unknown`."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _warn(what: str, err: BaseException) -> None:
    print(f"tracking: {what} failed ({type(err).__name__}: {str(err)[:300]}); the step goes on without MLflow",
          file=sys.stderr, flush=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


PRELOAD = ("mlflow", "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.tracking.sqlalchemy_workspace_store",
           "sqlalchemy.dialects.sqlite", "alembic.command", "alembic.config")
"""What this module imports by the time its first run is created on a SQLite store (~1.7 s
here): `tasks.forkserver` imports them once, before it forks the stages of a tracked study."""


def _client(cfg: StudyConfig) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cfg))


def _experiment_id(client: Any, cfg: StudyConfig) -> str:
    """The study's experiment, created on first use with the training kind (and, for a local
    store, an artifact location that does not depend on the cwd); an existing experiment
    without a chosen kind gets it."""
    name = cfg.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        options: dict[str, Any] = {"tags": {EXPERIMENT_KIND_TAG: TRAINING_KIND}}
        if not tracking_uri(cfg).startswith(("http://", "https://")):
            # a tracking server keeps artifacts where it was started to (--artifacts-destination)
            options["artifact_location"] = (Path.cwd() / "mlruns").resolve().as_uri()
        try:
            return client.create_experiment(name, **options)
        except Exception:  # created meanwhile by another process
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    kind = (experiment.tags or {}).get(EXPERIMENT_KIND_TAG)
    if kind is None or kind.endswith("_inferred") or kind == "no_inferred_type":
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return experiment.experiment_id


def _flatten(prefix: str, obj: Any) -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(obj) if isinstance(obj, list) else str(obj)}


def _teacher_param(cfg: StudyConfig, method: str) -> dict[str, str]:
    """`settings.teacher` of a one-teacher method entry: the setting is left out of settings
    dumps (the student's key holds the chosen cache instead), so it is logged here."""
    names = build_method(method, cfg.method_settings(method)).teacher_names()
    return {"settings.teacher": names[0]} if len(names) == 1 else {}


def student_params(cfg: StudyConfig, method: str, seed: int) -> dict[str, str]:
    """A student run's params: method, seed, arch, every method setting, the schedule."""
    return (
        {"method": method, "seed": str(seed), "arch": cfg.students.arch}
        | _flatten("settings", cfg.method_settings(method).model_dump()) | _teacher_param(cfg, method)
        | _flatten("schedule", cfg.students.schedule.model_dump())
    )


def teacher_params(cfg: StudyConfig, name: str) -> dict[str, str]:
    """A teacher run's params: `teacher.*` (its config), or `finetune.*` and `from` for a fine-tuned one."""
    if name in cfg.finetuned_teachers:
        return _flatten("finetune", cfg.finetuned_teachers[name].model_dump()) | {"from": "teacher", "arch": cfg.teacher.arch}
    config = cfg.teacher if name not in cfg.teachers else cfg.teachers[name]
    return _flatten("teacher", config.model_dump()) | {"arch": config.arch}


def teacher_run_name(name: str, arch: str) -> str:
    return f"teacher {arch}" if name == "teacher" else f"teacher {name} ({arch})"


def _metrics(values: dict[str, Any], step: int, prefix: str) -> list[Any]:
    """MLflow metrics of the defined numbers in `values`: a None or NaN (a quantity that does
    not exist for this run) is left out, never logged as 0."""
    from mlflow.entities import Metric

    stamp = _now_ms()
    out = []
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out.append(Metric(prefix + metric_safe(name), float(value), stamp, step))
    return out


def _log_batch(client: Any, run_id: str, metrics: list[Any] = (), params: dict[str, str] | None = None,
               tags: dict[str, str] | None = None) -> None:
    from mlflow.entities import Param, RunTag

    metrics = list(metrics)
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    items = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])
    tag_items = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
    for start in range(0, len(tag_items), 100):
        client.log_batch(run_id, tags=tag_items[start:start + 100])


# --------------------------------------------------------------------------- #
# the parent run of a pipeline run
# --------------------------------------------------------------------------- #
def describe(cfg: StudyConfig, front_door: str, data: dict[str, Any] | None = None, extra: str = "") -> str:
    """The parent's description (Markdown): study, data set, teacher, students, commit;
    `front_door` a key of `FRONT_DOORS`; `data`: the report's `setup.data` (a token data set's
    windows and tokens per split, context and vocabulary, or the images and classes)."""
    source = cfg.data.source
    if data is None:
        size = ""
    elif data.get("kind") == "tokens":
        tokens = data["tokens"]
        size = (f" (corpus {data['corpus']}): {data['num_train']} train / {data['num_val']} validation / "
                f"{data['num_test']} test windows of {data['context']} tokens ({tokens['train']} / {tokens['val']} / "
                f"{tokens['test']} tokens), vocabulary {data['num_classes']}")
    else:
        size = (f": {data['num_train']} train / {data['num_test']} test images, {data['num_classes']} classes, "
                f"shape {'x'.join(map(str, data['shape']))}")
    methods = ", ".join(f"`{m}`" for m in cfg.students.methods)
    lines = [
        f"**Study** `{cfg.study}`, run by {FRONT_DOORS.get(front_door, front_door)}.",
        f"**Data set** `{source}`{size}.",
        f"**Teacher** `{cfg.teacher.arch}`; **students** `{cfg.students.arch}`, {cfg.students.schedule.epochs} epochs, "
        f"seeds {cfg.students.seeds}; methods {methods}.",
        f"**Commit** `{git_commit()}`.",
    ]
    return "\n\n".join(lines + ([extra] if extra else []))


@time_account.charged("tracking")
def start_parent(cfg: StudyConfig, front_door: str, tags: dict[str, str], source: str) -> str | None:
    """Create the parent run of one pipeline run; returns its id (None: tracking is off or MLflow failed)."""
    if not cfg.tracking.enabled:
        return None
    try:
        client = _client(cfg)
        experiment_id = _experiment_id(client, cfg)
        name = f"{cfg.study} {datetime.now().astimezone():%Y-%m-%d %H:%M:%S}"
        run = client.create_run(experiment_id, start_time=_now_ms(), run_name=name, tags={
            "role": "pipeline", "study": cfg.study, "front_door": front_door,
            "mlflow.source.name": source, "mlflow.source.type": "LOCAL", "mlflow.source.git.commit": git_commit(),
            "mlflow.user": getpass.getuser(), "mlflow.note.content": describe(cfg, front_door), **tags,
        })
        params = _flatten("", cfg.model_dump(exclude={"methods"})) | {"methods": json.dumps(cfg.students.methods)}
        _log_batch(client, run.info.run_id, params=params)
    except Exception as err:  # noqa: BLE001 - the side channel never stops the pipeline
        _warn("creating the MLflow parent run", err)
        return None
    print(f"tracking: MLflow parent run {run.info.run_id} ({name}) in experiment {cfg.tracking.experiment!r}")
    return run.info.run_id


def experiment_of(cfg: StudyConfig, run_id: str) -> str:
    """The experiment id of a run (for its UI link)."""
    return _client(cfg).get_run(run_id).info.experiment_id


@time_account.charged("tracking")
def finish_parent(cfg: StudyConfig, run_id: str | None, status: str = "FINISHED") -> None:
    if run_id is None:
        return
    try:
        _client(cfg).set_terminated(run_id, status, end_time=_now_ms())
    except Exception as err:  # noqa: BLE001
        _warn(f"ending the MLflow parent run {run_id}", err)


def _dvc_record(cfg: StudyConfig) -> dict[str, str]:
    return {"uri": tracking_uri(cfg), "experiment": cfg.tracking.experiment, "study": cfg.study}


@time_account.charged("tracking")
def dvc_parent(cfg: StudyConfig) -> str | None:
    """The DVC front door's parent run: the open one of this `dvc repro`, or a new one.

    DVC runs each stage in its own process, with no notion of "this repro"; the first stage
    that logs creates the parent and records it in `DVC_PARENT`, later stages find it there,
    and `aggregate` ends it. A record of another study, experiment or store, or of a run that
    is no longer RUNNING, is replaced."""
    if not cfg.tracking.enabled:
        return None
    with artifacts.exclusive(DVC_PARENT.with_suffix(".lock")):
        if DVC_PARENT.is_file():
            record = json.loads(DVC_PARENT.read_text())
            if {k: record.get(k) for k in ("uri", "experiment", "study")} == _dvc_record(cfg):
                try:
                    if _client(cfg).get_run(record["run_id"]).info.status == "RUNNING":
                        return record["run_id"]
                except Exception:  # noqa: BLE001 - a deleted run or store: start a new parent
                    pass
        run_id = start_parent(cfg, "dvc", {"dvc": "dvc repro"}, source="dvc.yaml")
        if run_id is not None:
            artifacts.write_json(DVC_PARENT, {"run_id": run_id, **_dvc_record(cfg)})
        return run_id


@time_account.charged("tracking")
def close_dvc_parent(cfg: StudyConfig, run_id: str | None, status: str) -> None:
    """End the DVC parent run and forget it: the next `dvc repro` starts a new one."""
    if run_id is None:
        return
    with artifacts.exclusive(DVC_PARENT.with_suffix(".lock")):
        if DVC_PARENT.is_file() and json.loads(DVC_PARENT.read_text()).get("run_id") == run_id:
            DVC_PARENT.unlink()
    finish_parent(cfg, run_id, status)


@contextlib.contextmanager
def dvc_pipeline(cfg: StudyConfig, last: bool = False) -> Iterator[str | None]:
    """Around a DVC stage's work: yields the parent run id. A stage that raises (or is
    interrupted) ends the parent FAILED (KILLED) with it; `last` (aggregate) ends it FINISHED."""
    parent = dvc_parent(cfg)
    try:
        with sigterm_as_interrupt():
            yield parent
    except BaseException as err:
        if not (isinstance(err, SystemExit) and not err.code):
            close_dvc_parent(cfg, parent, status_of(err))
        raise
    if last:
        close_dvc_parent(cfg, parent, "FINISHED")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so a live run ends KILLED rather than RUNNING forever."""


class StopRequested(Exception):
    """Raised at an epoch's end in a training thread once the process was asked to stop (`STOP`)."""


STOP = threading.Event()
"""Set when this process is asked to stop (`stop_on_signals`): a step training in another
thread ends at its next epoch, its run KILLED, instead of outliving the flow run."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """In the main thread: SIGTERM and SIGINT set `STOP`, then go on to the handler installed
    before (in a Prefect flow run, Prefect's SIGTERM bridge, which raises its TerminationSignal
    there; Python's KeyboardInterrupt for SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()  # a new run: an earlier interrupted one in this process (a notebook) does not stop it
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def stop(signum: int, frame: Any) -> None:
        STOP.set()
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:
            raise Terminated(f"signal {signum}")

    for sig in previous:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread: SIGTERM raises `Terminated` for the duration of the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- #
# the live run of one computed step
# --------------------------------------------------------------------------- #
class StepRun:
    """The live MLflow run of one step, or a stand-in that logs nothing (`run_id` None).

    The first MLflow error is reported on stderr and turns the rest of the logging off; the
    run is still ended, so it never stays RUNNING."""

    def __init__(self, client: Any = None, run_id: str | None = None) -> None:
        self.client, self.run_id = client, run_id
        self.failure: str | None = None
        self.done_ms: int | None = None
        self.ended = False
        self._broken = False

    def __bool__(self) -> bool:
        return self.run_id is not None

    @time_account.charged("tracking")
    def _do(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.run_id is None or self._broken:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            self._broken = True
            _warn(f"{what} of MLflow run {self.run_id}", err)

    def epoch(self, record: dict[str, float], timing: dict[str, float] | None = None) -> None:
        """One epoch's history record as `epoch/<name>` metrics at step = epoch (`kdlib.train.fit`'s
        `on_epoch`); raises `StopRequested` when the process is being stopped (`STOP`)."""
        step = int(record["epoch"])
        values = {k: v for k, v in record.items() if k != "epoch"}
        self._do("logging an epoch", lambda: _log_batch(self.client, self.run_id, _metrics(values, step, "epoch/")))
        if STOP.is_set() and timing is not None:
            raise StopRequested(f"stopped after epoch {step}: the process was asked to stop")

    def final(self, values: dict[str, Any], step: int = 0) -> None:
        """End-of-step numbers as `final/<name>`; None and NaN are left out."""
        self._do("logging final metrics", lambda: _log_batch(self.client, self.run_id, _metrics(values, step, "final/")))

    def tags(self, tags: dict[str, Any]) -> None:
        self._do("tagging", lambda: _log_batch(self.client, self.run_id, tags={k: str(v) for k, v in tags.items()}))

    def files(self, paths: list[Path], artifact_path: str | None = None) -> None:
        if self.run_id is None:
            return
        for path in paths:
            if Path(path).is_file():
                self._do(f"logging {Path(path).name}", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def done(self) -> None:
        """The step's work is over (its artifact is written): the run ends now, whatever is
        logged after (its files), so its duration is the step's, not the logging's."""
        self.done_ms = _now_ms()

    def fail(self, error: str) -> None:
        """End FAILED although the step finished (a diverged student is a result, and a failed run)."""
        self.failure = error
        self.tags({"error": error[:5000]})

    @time_account.charged("tracking")
    def end(self, status: str) -> None:
        if self.run_id is None or self.ended:
            return
        self.ended = True
        _OPEN.discard(self)
        account = time_account.current()
        if account is not None:  # where the step's time went, up to now: `time/<phase>` seconds
            record = account.record()
            spent = {**record["seconds"], "other": record["other"], "wall": record["wall"]}
            self._do("logging the time account", lambda: _log_batch(self.client, self.run_id, _metrics(spent, 0, "time/")))
        try:
            self.client.set_terminated(self.run_id, "FAILED" if self.failure and status == "FINISHED" else status,
                                       end_time=self.done_ms if status == "FINISHED" and self.done_ms else _now_ms())
        except Exception as err:  # noqa: BLE001
            _warn(f"ending MLflow run {self.run_id}", err)


_OPEN: set[StepRun] = set()


@atexit.register
def end_open_runs(status: str = "KILLED") -> None:
    """End the runs of this process still open: at exit, or when the flow is stopped while
    tasks still train in other threads (which then log nothing more to them)."""
    for run in list(_OPEN):
        run.end(status)


def status_of(err: BaseException | None) -> str:
    """The MLflow status of a run that ended with `err`: KILLED for an interruption
    (Ctrl-C, SIGTERM; Prefect's TerminationSignal, a cancelled flow run), FAILED otherwise."""
    if err is None:
        return "FINISHED"
    interrupted = isinstance(err, (KeyboardInterrupt, StopRequested)) or type(err).__name__ in (
        "TerminationSignal", "CancelledError")
    return "KILLED" if interrupted else "FAILED"


@time_account.charged("tracking")
def _create_step_run(
    cfg: StudyConfig, parent: str, step: str, key: str, name: str, params: dict[str, str], tags: dict[str, str],
) -> StepRun:
    client = _client(cfg)
    experiment_id = _experiment_id(client, cfg)
    run = client.create_run(experiment_id, start_time=_now_ms(), run_name=name, tags={
        "mlflow.parentRunId": parent, "step": step, "artifact_key": key,
        "mlflow.source.name": f"tasks/{step}.py", "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": git_commit(), "mlflow.user": getpass.getuser(), **tags,
    })
    live = StepRun(client, run.info.run_id)
    _log_batch(client, live.run_id, params=params)
    return live


@contextlib.contextmanager
def step_run(
    cfg: StudyConfig, parent: str | None, step: str, key: str, name: str, params: dict[str, str], tags: dict[str, str],
) -> Iterator[StepRun]:
    """The live run of one computed step, nested under `parent`; a stand-in when tracking is
    off or there is no parent. Ends FINISHED, FAILED (an exception, or `StepRun.fail`) or
    KILLED (KeyboardInterrupt, SIGTERM, or the process exiting)."""
    if parent is None or not cfg.tracking.enabled:
        yield StepRun()
        return
    try:
        live = _create_step_run(cfg, parent, step, key, name, params, tags)
    except Exception as err:  # noqa: BLE001
        _warn(f"creating the MLflow run of {name}", err)
        yield StepRun()
        return
    _OPEN.add(live)
    try:
        yield live
    except BaseException as err:
        if not isinstance(err, (KeyboardInterrupt, SystemExit, StopRequested)):
            live.tags({"error": f"{type(err).__name__}: {err}"[:5000]})
        live.end(status_of(err))
        raise
    live.end("FINISHED")


# --------------------------------------------------------------------------- #
# finding the run that computed an artifact
# --------------------------------------------------------------------------- #
def _runs_of(client: Any, experiment_id: str, key: str) -> list[Any]:
    """Runs that computed (or evaluated) the artifact `key`, oldest first."""
    return client.search_runs([experiment_id], f"tags.artifact_key = '{key}'", order_by=["attributes.start_time ASC"],
                              max_results=100)


def computing_run(client: Any, experiment_id: str, key: str) -> Any | None:
    """The run that computed the artifact `key`: the first that wrote it (tag `artifact_dir`)."""
    return next((r for r in _runs_of(client, experiment_id, key) if "artifact_dir" in r.data.tags), None)


@time_account.charged("tracking")
def log_evaluation(
    cfg: StudyConfig, parent: str | None, student: dict[str, Any], metrics: dict[str, Any], files: list[Path],
    evaluation_key: str,
) -> None:
    """A student's evaluation as `final/*` metrics on the student's run when it was trained
    under the same parent; else (the student came from a cache) on a new child run
    `<method> seed <s> (evaluation)` that names the student's run."""
    if parent is None or not cfg.tracking.enabled or "failed" in metrics:
        return
    values = {k: v for k, v in metrics.items() if k not in ("method", "seed")}
    try:
        client = _client(cfg)
        experiment_id = _experiment_id(client, cfg)
        trained = [r for r in _runs_of(client, experiment_id, student["key"]) if r.data.tags.get("role") == "student"]
        own = next((r for r in trained if r.data.tags.get("mlflow.parentRunId") == parent), None)
    except Exception as err:  # noqa: BLE001
        _warn("finding the student's MLflow run", err)
        return
    if own is not None:
        run = StepRun(client, own.info.run_id)
        run.final(values, step=int(metrics.get("last_epoch", 0)))
        run.tags({"evaluation_key": evaluation_key})
        run.files(files, "evaluation")
        return
    method, seed = metrics["method"], metrics["seed"]
    tags = {"role": "evaluation", "method": method, "seed": str(seed), "student_key": student["key"],
            "student_run_id": trained[0].info.run_id if trained else "none (not in this tracking store)"}
    with step_run(cfg, parent, "evaluate", evaluation_key, f"{method} seed {seed} (evaluation)",
                  {"method": method, "seed": str(seed)}, tags) as run:
        run.final(values, step=int(metrics.get("last_epoch", 0)))
        run.files(files, "evaluation")
        run.tags({"artifact_dir": student["dir"]})


@time_account.charged("tracking")
def publish(
    cfg: StudyConfig, parent: str | None, steps: list[tuple[str, str, str]], files: list[Path], figures: list[Path],
    tags: dict[str, str], description: str,
) -> None:
    """End-of-pipeline logging on the parent: the study's files and figures (images, so the
    chart tab shows them), its tags and description, and for each `(step, run name, key)` of
    the study not computed under this parent, a tag `reused/<run name>` with the id of the run
    that computed it and the artifact key."""
    if parent is None or not cfg.tracking.enabled:
        return
    try:
        client = _client(cfg)
        experiment_id = _experiment_id(client, cfg)
        own = {r.data.tags.get("artifact_key") for r in client.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=10000)}
        links, lines = {}, []
        for step, name, key in steps:
            if key in own:
                continue
            found = computing_run(client, experiment_id, key)
            run_id = found.info.run_id if found is not None else None
            links[f"reused/{tag_key(name)}"] = json.dumps({"run_id": run_id, "artifact_key": key, "step": step})
            where = f"[{name}](#/experiments/{experiment_id}/runs/{run_id})" if run_id else f"{name} (no run in this store)"
            lines.append(f"- {where}: `{step}` artifact `{key}`")
        if lines:
            description += "\n\n**Reused from earlier runs** (cached, not re-logged):\n\n" + "\n".join(lines)
        _log_batch(client, parent, tags={**tags, **links, "mlflow.note.content": description})
        for path in files:
            client.log_artifact(parent, str(path))
        for path in figures:
            from PIL import Image

            with Image.open(path) as image:
                client.log_image(parent, image.convert("RGB"), key=f"figures/{path.stem}", step=0)
            client.log_artifact(parent, str(path), "figures")
    except Exception as err:  # noqa: BLE001
        _warn(f"publishing to the MLflow parent run {parent}", err)
