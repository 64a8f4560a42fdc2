"""The schema of `params.yaml`: one validated object the whole DAG reads.

Every model forbids unknown keys, so a typo is an error that names its field path
instead of a setting that is silently ignored. Method settings are validated by the
method's own settings model (see `kdlib.methods.base`), so each method's defaults live in
one place and `params.yaml` can override every one of them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdlib.models import ARCHS, TOKEN_ARCHS, forward_error


if TYPE_CHECKING:
    from kdlib.methods.base import MethodSettings

MAIN_TEACHER = "teacher"
"""The name of the study's `teacher:`; extra and fine-tuned teachers have their own names."""

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,63}")
"""Every name a study file gives (study, method entries, teachers) becomes part of file
paths, DVC stage names and commands, MLflow keys and Prefect task names: letters, digits,
'_', '+', '-', starting with a letter or digit, at most 64 characters. Nothing else (no
'/', '.', spaces or shell characters) can reach a path or a command."""


def check_name(field: str, name: Any) -> str:
    """`name` if it matches `NAME`, else a ValueError naming `field` and the value."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"{field}: {name!r} is not a valid name (letters, digits, '_', '+' or '-', starting with a "
            "letter or digit, at most 64 characters)"
        )
    return name


def _method_class(name: str) -> Any:
    """The `kdlib.methods` class registered as `name`. Imported here, on use: importing
    kdlib.config loads no method module (teacher training never imports distillation code)."""
    from kdlib.methods.base import method_class

    return method_class(name)


class ConfigError(ValueError):
    """A `params.yaml` that cannot run; the message names the field and the fix."""


class Strict(BaseModel):
    # allow_inf_nan=False: YAML's .inf / .nan (and "inf", "1e400") are refused for every float
    # setting, with the field's path, instead of failing the first training step.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _source(name: str) -> Any:
    """The `kdlib.data.sources` class registered as `name` (ValueError listing the names if
    none). Imported here, on use: importing kdlib.config loads no source module."""
    from kdlib.data.sources.base import source_class

    return source_class(name)


SYNTHETIC_TRAIN_PER_CLASS = 40
"""`data.train_per_class` of a synthetic study that sets none."""


class DataConfig(Strict):
    source: str = Field("synthetic", description="a data source registered in kdlib.data.sources")
    seed: int = 0
    train_per_class: int | None = Field(
        None, ge=1,
        description="training images per class. synthetic: generated (unset: 40, resolved at validation); digits: a "
        "seeded stratified subset of K per class of the training split, the test split unchanged (unset: the whole "
        "split); other sources ignore it",
    )
    test_per_class: int = Field(20, ge=1, description="synthetic only")
    image_size: int = Field(8, ge=4, description="synthetic and imagefolder; each arch is probed at it (see input_shape)")
    difficulty: float = Field(1.0, ge=0.0, description="synthetic only: scales the nuisance")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="digits: images held out; text: documents held out")
    path: str | None = Field(
        None, description="cifar: the official archive; imagefolder: the folder with train/ and test/; text: a folder "
        "of UTF-8 .txt files, one document each, read instead of data.corpus",
    )
    url: str | None = Field(None, description="cifar: where to download the official archive (MD5 checked) into `root`")
    root: str = Field("data", description="where downloads go; data paths must lie inside the project or here")
    md5_check: bool = Field(
        True, exclude=True,
        description="cifar: read an archive (data.path or a download) only if its MD5 is the official one; false "
        "accepts a modified archive. Left out of dumps (and so of prepare_data's key): it decides whether a build "
        "may run, never what it builds",
    )
    vocab_size: int = Field(
        4096, gt=256, le=65536, description="text: the byte-level BPE vocabulary trained on the train split (256 "
        "bytes, the end-of-text token, merges); with data.tokenizer, ignored: that tokenizer's vocabulary is used",
    )
    context: int = Field(
        64, ge=1, le=65536, description="text: tokens per training window (T); each arch is probed with it in the image-size slot"
    )
    corpus: list[Literal["pydoc", "stdlib"]] = Field(
        default_factory=lambda: ["pydoc"], min_length=1,
        description="text: the built-in documents, read from this Python: pydoc (the standard library's documentation "
        "topics, one per topic), stdlib (the standard library's .py files, one per file); ignored with data.path",
    )
    max_chars: int | None = Field(
        None, ge=1, description="text: at most this many characters per corpus domain (a prefix of its documents in "
        "sorted order), for small studies; unset: all",
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="text: documents held out for validation")
    tokenizer: str | None = Field(
        None, description="text: a Hugging Face tokenizer.json with an <|endoftext|> token, used instead of training "
        "one; inside the project or data.root",
    )

    @model_validator(mode="before")
    @classmethod
    def _synthetic_train_per_class(cls, raw: Any) -> Any:
        # synthetic generates 40 per class unless told: resolved here, so a key holds the count that runs
        if isinstance(raw, dict) and raw.get("train_per_class") is None and raw.get("source", "synthetic") == "synthetic":
            return {**raw, "train_per_class": SYNTHETIC_TRAIN_PER_CLASS}
        return raw

    @field_validator("source")
    @classmethod
    def _registered_source(cls, name: str) -> str:
        _source(name)  # "data.source: unknown source 'x'; allowed: ..."
        return name

    @model_validator(mode="after")
    def _check_paths(self) -> "DataConfig":
        for field, value in (("path", self.path), ("tokenizer", self.tokenizer)):
            if value is None:
                continue
            path = Path(value).expanduser().resolve()
            allowed = (Path.cwd().resolve(), Path(self.root).expanduser().resolve())
            if not any(path.is_relative_to(base) for base in allowed):
                raise ValueError(f"data.{field} {value!r} is outside the project and data.root ({self.root!r}); move it or set data.root")
            if not path.exists():
                raise ValueError(f"data.{field} {value!r} does not exist (resolved to {path})")
        # after the path is known to lie inside the project: a source's check may list it
        _source(self.source).check(self)
        return self

    def input_shape(self) -> tuple[int, int, int]:
        """(channels, image size, classes) of the images this source yields, known before
        any data is read: what validation probes each arch with (the source says)."""
        return _source(self.source).input_shape(self)

    @property
    def kind(self) -> str:
        """"images" or "tokens": what this source yields (`Source.kind`)."""
        return str(_source(self.source).kind)

    def takes_image_size(self) -> bool:
        """Whether `image_size` sets the size of this source's images."""
        return bool(_source(self.source).takes_image_size)


class AugmentConfig(Strict):
    """Random crop with padding + horizontal flip, replayed from (seed, epoch, index)."""

    padding: int = Field(1, ge=0)
    flip: bool = True
    seed: int = 0


class ScheduleConfig(Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="sgd: SGD with `momentum` (the CIFAR KD recipes); adamw: AdamW with betas (0.9, 0.95), "
        "decoupled `weight_decay` (nanoGPT's, for token archs)",
    )
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    weight_decay: float = Field(5e-4, ge=0.0)
    scheduler: Literal["cosine", "multistep"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="multistep only: epochs")
    gamma: float = Field(0.1, gt=0.0, description="multistep only: lr factor per milestone")
    warmup_epochs: int = Field(0, ge=0)
    lr_scale: float = Field(
        1.0, gt=0.0, description="multiplies lr at every step; in `teacher`, `teachers.<name>` and `students` "
        "`auto` (their default) is the official per-arch rule, `OFFICIAL_LR_SCALE`",
    )

    @model_validator(mode="after")
    def _check(self) -> "ScheduleConfig":
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        if self.milestones != sorted(self.milestones) or any(not 0 < m < self.epochs for m in self.milestones):
            raise ValueError(f"milestones {self.milestones} must be increasing and inside (0, epochs={self.epochs})")
        return self


OFFICIAL_LR_SCALE: dict[str, float] = {"MobileNetV2": 0.2, "ShuffleV1": 0.2, "ShuffleV2": 0.2}
"""The official CIFAR-100 scripts' per-arch learning-rate rule: DHKD's train_student.py multiplies
the lr by 0.2 for these students (0.05 -> 0.01, lines 82-84); CRD's train_student.py and both
repos' train_teacher.py set it to 0.01 for them. `schedule.lr_scale: auto` applies it."""


def official_lr_scale(arch: str) -> float:
    return OFFICIAL_LR_SCALE.get(arch, 1.0)


def _auto_lr_scale(raw: Any, default_arch: str) -> Any:
    """A raw `teacher` / `students` mapping with its `schedule.lr_scale` resolved when it is
    `auto` or absent: the official rule for its arch (so keys hold the factor that runs)."""
    schedule = raw.get("schedule") if isinstance(raw, dict) else None
    if not isinstance(schedule, dict) or schedule.get("lr_scale", "auto") != "auto":
        return raw
    arch = raw.get("arch", default_arch)
    return {**raw, "schedule": {**schedule, "lr_scale": official_lr_scale(arch) if isinstance(arch, str) else 1.0}}


class TeacherConfig(Strict):
    """A teacher trained here from `seed` on `schedule`; or one not trained here: a released
    checkpoint (`checkpoint`), or the untrained random initialisation of `seed` (`untrained`)."""

    arch: str = "resnet20"
    seed: int = Field(0, description="init, batch order and the teacher's own views; `untrained`: its init")
    schedule: ScheduleConfig | None = Field(None, description="required to train it; none with checkpoint or untrained")
    checkpoint: str | None = Field(
        None, description="a released teacher of `arch` ({'model': state_dict}, CRD / mdistiller / DHKD parameter "
        "names) used instead of training; inside the project or data.root",
    )
    checkpoint_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="the checkpoint file's sha256: any other content is refused",
    )
    untrained: bool = Field(
        False, description="use the randomly initialised teacher (seed `seed`) untrained (Sarnthein et al. 2023)"
    )

    @model_validator(mode="before")
    @classmethod
    def _lr_scale(cls, raw: Any) -> Any:
        return _auto_lr_scale(raw, cls.model_fields["arch"].default)

    @model_validator(mode="after")
    def _check_source(self) -> "TeacherConfig":
        if self.checkpoint is not None and self.untrained:
            raise ValueError("checkpoint and untrained: true are two teachers; keep one")
        if self.checkpoint_sha256 is not None and self.checkpoint is None:
            raise ValueError("checkpoint_sha256 pins the content of `checkpoint`, which is not set")
        if self.checkpoint is not None and "seed" in self.model_fields_set:
            raise ValueError("seed: a teacher loaded from `checkpoint` has its weights; nothing here is seeded, remove seed")
        if self.trained() and self.schedule is None:
            raise ValueError("schedule: required to train this teacher (or set checkpoint, or untrained: true)")
        if not self.trained() and self.schedule is not None:
            made = "loaded from `checkpoint`" if self.checkpoint else "untrained"
            raise ValueError(f"schedule: this teacher is {made}, nothing trains it; remove its schedule")
        return self

    def trained(self) -> bool:
        """Whether train_teacher trains it (neither `checkpoint` nor `untrained`)."""
        return self.checkpoint is None and not self.untrained


class FinetunedTeacherConfig(Strict):
    """A fine-tuned copy of the trained `teacher` (shared docs/methods.md, "MCMI teacher").

    `regularizer: mcmi` fine-tunes with CE + lam * KL(P_x || Q_y) (Ye et al., ICLR 2024);
    `none` with CE alone for the same schedule: the control that separates MCMI's effect
    from that of more epochs. Defaults are the authors' CIFAR-100 `FineTuneTeacher.py`
    (20 epochs, cosine, lr 0.05, batch 64) and scripts (lam = -0.25).
    """

    regularizer: Literal["mcmi", "none"] = "mcmi"
    lam: float = Field(-0.25, lt=0, description="mcmi: weight of KL(P_x || Q_y); < 0 maximises the teacher's CMI")
    seed: int = Field(0, description="batch order and the fine-tune's own augmentation views")
    schedule: ScheduleConfig = ScheduleConfig(epochs=20, batch_size=64, lr=0.05)

    @model_validator(mode="after")
    def _check_lam(self) -> "FinetunedTeacherConfig":
        if self.regularizer == "none" and "lam" in self.model_fields_set:
            raise ValueError("lam is the weight of the MCMI term: it needs regularizer: mcmi")
        return self


class LogitsConfig(Strict):
    dtype: Literal["float16"] = "float16"
    batch_size: int = Field(500, ge=1)
    topk: int | None = Field(
        None, ge=1, description="also write TinyViT's sparse cache: the teacher's top-K probabilities per view"
    )


class InitFromTeacher(Strict):
    """Students start near the teacher's initial weights (Sarnthein et al. 2023, "Random Teachers
    are Good Teachers"; their code's `--s_init neighborhood`): theta = theta_T + noise * theta_R,
    theta_T the `teacher`'s initialisation (arch and seed), theta_R the student's own seeded
    initialisation, over every parameter; buffers are the teacher's."""

    noise: float = Field(0.0, ge=0.0, description="the paper code's s_init_eps: 0 starts from the teacher's init itself")
    variance_preserving: bool = Field(False, description="divide by sqrt(1 + noise^2) (s_init_var_preserving)")


class StudentsConfig(Strict):
    arch: str = "resnet8"
    seeds: list[int] = Field(min_length=1)
    schedule: ScheduleConfig
    methods: list[str] = Field(min_length=1, description="names of entries in `methods`")
    init_from_teacher: InitFromTeacher | None = Field(
        None, description="start from `teacher`'s initialisation plus noise; needs teacher.arch and no teacher.checkpoint"
    )

    @model_validator(mode="before")
    @classmethod
    def _lr_scale(cls, raw: Any) -> Any:
        return _auto_lr_scale(raw, cls.model_fields["arch"].default)


class EvaluationConfig(Strict):
    ece_bins: int = Field(15, ge=2)
    probe_size: int = Field(128, ge=2, description="training samples of the fixed gradient-conflict probe batch")
    nc_every: int = Field(0, ge=0, description="neural-collapse metrics every K epochs (0: the last epoch only)")


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "kdflow"


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    kernels: Literal["auto", "triton", "torch"] = Field(
        "auto", description="loss backend: auto (Triton on CUDA, PyTorch on CPU), triton, torch (kdlib.kernels.utils.resolve_backend)"
    )
    threads: int = Field(2, ge=1)
    store: str = Field(
        ".kdflow/store",
        description="content-addressed artifacts of the Prefect flow: a path (a shared mount for several machines) or file:// URL",
    )
    compile: bool = Field(False, description="torch.compile the trained model (CUDA only; an error on CPU)")
    task_runner: Literal["thread", "dask"] = Field(
        "thread", description="thread: one task at a time in the flow's process; dask: tasks on a Dask cluster (prefect-dask)"
    )
    max_parallel_students: int = Field(1, ge=1, description="dask LocalCluster: its worker processes (one task each)")
    dask_address: str | None = Field(None, description="dask: the scheduler of a running cluster (tcp://host:8786) instead of a LocalCluster")
    ddp: bool = Field(False, description="train_student under torchrun: one student on several processes (DistributedDataParallel)")

    @model_validator(mode="before")
    @classmethod
    def _local_store(cls, raw: Any) -> Any:
        """A file:// store becomes its path; any other URL scheme is refused: the store takes
        flock locks and renames files into place, which object stores (s3://, gs://) cannot."""
        store = raw.get("store") if isinstance(raw, dict) else None
        if not isinstance(store, str) or "://" not in store:
            return raw
        scheme, _, rest = store.partition("://")
        host, slash, path = rest.partition("/")
        if scheme != "file" or host not in ("", "localhost") or not slash:
            raise ValueError(
                f"runtime.store {store!r}: only a local or mounted path (or a file:///absolute/path URL) can hold the "
                "store, which needs file locks and atomic renames; mount the bucket or share (NFS, s3fs) and give its path"
            )
        return {**raw, "store": "/" + path}

    @model_validator(mode="after")
    def _check_runner(self) -> "RuntimeConfig":
        if self.task_runner == "thread" and self.max_parallel_students > 1:
            raise ValueError(
                "runtime.max_parallel_students > 1 needs task_runner: dask (students in threads of one process "
                "would share torch's global RNG and not be reproducible)"
            )
        if self.dask_address is not None and self.task_runner != "dask":
            raise ValueError("runtime.dask_address is set but runtime.task_runner is not 'dask'")
        if self.dask_address is not None and "max_parallel_students" in self.model_fields_set:
            raise ValueError(
                "runtime.max_parallel_students sizes the LocalCluster; with runtime.dask_address the cluster's "
                "workers bound the parallelism: start as many as you want students at once"
            )
        return self


class StudyConfig(Strict):
    study: str = "default"
    data: DataConfig = Field(default_factory=DataConfig)  # built on use: it asks the source registry
    augment: AugmentConfig = AugmentConfig()
    teacher: TeacherConfig
    teachers: dict[str, TeacherConfig] = Field(
        default_factory=dict, description="extra teachers by name, each trained from scratch like `teacher`"
    )
    finetuned_teachers: dict[str, FinetunedTeacherConfig] = Field(
        default_factory=dict, description="fine-tuned copies of `teacher` by name (MCMI, or CE alone)"
    )
    logits: LogitsConfig = LogitsConfig()
    students: StudentsConfig
    methods: dict[str, Any] = Field(
        default_factory=dict,
        description="settings per method entry; the key is the entry's name, `method:` picks the "
        "registry method when the name is a variant (e.g. kd_t2: {method: kd, temperature: 2}). "
        "Parsed once by `_parse_methods`: the values are `kdlib.methods.base.MethodSettings`",
    )
    evaluation: EvaluationConfig = EvaluationConfig()
    tracking: TrackingConfig = TrackingConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _parse_methods(cls, raw: Any) -> Any:
        """`methods` holds each entry's parsed settings (its method's `Settings`), validated
        here, once: every name in `students.methods` (an entry without a block gets its
        method's defaults), then every other entry of `methods`. Errors name
        `methods.<entry>.<field>`."""
        if not isinstance(raw, dict) or not isinstance(raw.get("methods", {}), dict):
            return raw  # the fields' own validation names what is wrong
        from kdlib.methods.base import MethodSettings, validate_method_entry

        blocks = raw.get("methods", {})
        students = raw.get("students")
        listed = students.get("methods") if isinstance(students, dict) else getattr(students, "methods", None)
        listed = [n for n in listed if isinstance(n, str)] if isinstance(listed, list) else []
        check_name("study", raw.get("study", "default"))
        for name in listed:
            check_name("students.methods", name)
        for name in blocks:
            check_name("methods", name)
        for section in ("teachers", "finetuned_teachers"):
            named = raw.get(section)
            for name in named if isinstance(named, dict) else ():
                check_name(section, name)
        parsed: dict[str, Any] = {}
        for name in [*dict.fromkeys(listed), *(n for n in blocks if n not in listed)]:
            block = blocks.get(name)
            if isinstance(block, MethodSettings):
                parsed[name] = block
            elif block is None or isinstance(block, dict):
                parsed[name] = validate_method_entry(name, block)
            else:
                raise ValueError(f"methods.{name}: a mapping of settings, got {type(block).__name__} {block!r}")
        return {**raw, "methods": parsed}

    @model_validator(mode="after")
    def _check_references(self) -> "StudyConfig":
        for field, arch in (("teacher.arch", self.teacher.arch), ("students.arch", self.students.arch)):
            if arch not in ARCHS:
                raise ValueError(f"{field}: unknown arch {arch!r}; allowed: {', '.join(ARCHS)}")
        if len(set(self.students.methods)) != len(self.students.methods):
            raise ValueError(f"students.methods: duplicate entries in {self.students.methods}")
        if len(set(self.students.seeds)) != len(self.students.seeds):
            raise ValueError(f"students.seeds: duplicate seeds in {self.students.seeds}")
        for name in self.students.methods:
            settings = self.method_settings(name)
            if self.logits.topk is None and {"topk_probs", "topk_indices"} & set(_method_class(settings.method).cached):
                raise ValueError(f"students.methods: {name!r} trains from the sparse top-K logit cache; set logits.topk (e.g. 10)")
        self._check_teachers()
        self._check_classes()
        self._check_kind()
        self._check_shapes()
        return self

    def _check_kind(self) -> None:
        """Token data trains token archs and image data image archs; on tokens, a method must
        run per position from the token cache (no teacher features, no image stage)."""
        tokens = self.data.kind == "tokens"
        archs = [("teacher.arch", self.teacher.arch), ("students.arch", self.students.arch)]
        archs += [(f"teachers.{name}.arch", t.arch) for name, t in self.teachers.items()]
        for field, arch in archs:
            if (arch in TOKEN_ARCHS) != tokens:
                reads = "token ids" if arch in TOKEN_ARCHS else "images"
                allowed = ", ".join(sorted(TOKEN_ARCHS)) if tokens else "an image arch"
                raise ValueError(f"{field}: {arch} reads {reads}; data.source {self.data.source!r} yields {self.data.kind} "
                                 f"(pick {allowed})")
        if not tokens:
            return
        for name in self.students.methods:
            why = _method_class(self.method_settings(name).method).token_refusal()
            if why is not None:
                raise ValueError(f"students.methods: {name!r} cannot train on tokens: it {why}")

    def teacher_names(self) -> list[str]:
        """Every teacher the study trains and caches: `teacher`, then the extra and fine-tuned ones."""
        return [MAIN_TEACHER, *self.teachers, *self.finetuned_teachers]

    def _check_teachers(self) -> None:
        """Teacher names are unique, usable in paths and DVC stage names, and every method
        entry reads only declared teachers (`Method.teacher_names`)."""
        for field, names in (("teachers", self.teachers), ("finetuned_teachers", self.finetuned_teachers)):
            for name in names:
                if name == MAIN_TEACHER:
                    raise ValueError(f"{field}.{name}: {MAIN_TEACHER!r} is the name of `teacher`; give this teacher another name")
        both = set(self.teachers) & set(self.finetuned_teachers)
        if both:
            raise ValueError(f"finetuned_teachers: {sorted(both)} also declared under teachers; give each teacher one name")
        for name, extra in self.teachers.items():
            if extra.arch not in ARCHS:
                raise ValueError(f"teachers.{name}.arch: unknown arch {extra.arch!r}; allowed: {', '.join(ARCHS)}")
        declared = self.teacher_names()
        for name in self.students.methods:
            settings = self.method_settings(name)
            method = _method_class(settings.method)
            if "teacher" in settings.model_fields_set and (not method.needs_teacher or "teachers" in method.Settings.model_fields):
                reads = "reads no logit cache" if not method.needs_teacher else "names its teachers in `teachers`"
                raise ValueError(f"methods.{name}.teacher: method {settings.method!r} {reads}")
            field = "teachers" if "teachers" in method.Settings.model_fields else "teacher"
            for teacher in method(settings).teacher_names():
                if teacher not in declared:
                    raise ValueError(
                        f"methods.{name}.{field}: unknown teacher {teacher!r}; declared teachers: {', '.join(declared)}"
                    )
        self._check_teacher_sources()

    def _check_teacher_sources(self) -> None:
        """A teacher's `checkpoint` exists inside the project or `data.root` (as `data.path`);
        `students.init_from_teacher` needs `teacher` built from its seed, in the students' arch."""
        allowed = (Path.cwd().resolve(), Path(self.data.root).expanduser().resolve())
        for field, tc in (("teacher", self.teacher), *((f"teachers.{n}", t) for n, t in self.teachers.items())):
            if tc.checkpoint is None:
                continue
            path = Path(tc.checkpoint).expanduser().resolve()
            if not any(path.is_relative_to(base) for base in allowed):
                raise ValueError(
                    f"{field}.checkpoint {tc.checkpoint!r} is outside the project and data.root ({self.data.root!r}); "
                    "move it or set data.root"
                )
            if not path.is_file():
                raise ValueError(f"{field}.checkpoint {tc.checkpoint!r} is not a file (resolved to {path})")
        if self.students.init_from_teacher is not None:
            if self.teacher.checkpoint is not None:
                raise ValueError(
                    "students.init_from_teacher: teacher.checkpoint is a released teacher whose initialisation is not known"
                )
            if self.students.arch != self.teacher.arch:
                raise ValueError(
                    f"students.init_from_teacher: students.arch {self.students.arch!r} must be teacher.arch "
                    f"{self.teacher.arch!r} (the students start from the teacher's weights)"
                )

    def _check_classes(self) -> None:
        """The data set's class count (the source's `input_shape`; for imagefolder, the class
        folders of `data.path/train`, listed, no image read) fits `logits.topk` and each listed
        method's `min_classes`, so a study its data cannot train stops here, not after training."""
        classes = self.data.input_shape()[2]
        data = f"data.source {self.data.source!r}" + (f" (data.path {self.data.path})" if self.data.path else "")
        if self.logits.topk is not None and self.logits.topk > classes:
            raise ValueError(f"logits.topk: {self.logits.topk} is more than the {classes} classes of {data}; set logits.topk <= {classes}")
        for name in self.students.methods:
            needs = _method_class(self.method_settings(name).method).min_classes
            if classes < needs:
                raise ValueError(f"students.methods: {name!r} needs at least {needs} classes; {data} has {classes}")

    def _check_shapes(self) -> None:
        """A teacher, or a student as a method trains it, that cannot run one step on the
        data's images at its batch size is an error naming the field to change."""
        channels, size, classes = self.data.input_shape()
        images = f"{channels}x{size}x{size} images of data.source {self.data.source!r}"
        # (where the arch is set, where the batch size is set, arch, batch size, second head, how it is trained)
        # a teacher that is not trained here (checkpoint, untrained) only runs forward: a batch of 2
        probes = [("teacher", "teacher", self.teacher.arch, self.teacher.schedule.batch_size if self.teacher.schedule else 2, None, "")]
        probes += [
            (f"teachers.{name}", f"teachers.{name}", t.arch, t.schedule.batch_size if t.schedule else 2, None, "")
            for name, t in self.teachers.items()
        ]
        # a fine-tune trains `teacher`'s arch: only its batch size can fail here
        probes += [
            ("teacher", f"finetuned_teachers.{name}", self.teacher.arch, f.schedule.batch_size, None, "")
            for name, f in self.finetuned_teachers.items()
        ]
        batch = self.students.schedule.batch_size
        for name in self.students.methods:
            settings = self.method_settings(name)
            method = _method_class(settings.method)
            aux_head = getattr(settings, "aux_head", None) if method.dual_head else None
            via = f" with the {aux_head} second head of methods.{name}" if aux_head else ""
            probes.append(("students", "students", self.students.arch, batch, aux_head, via))
            if method.online_teacher:  # trained beside the student, on the student's batches
                probes.append(("teacher", "students", self.teacher.arch, batch, None, f" (the online teacher of methods.{name})"))
        for arch_field, batch_field, arch, batch_size, aux_head, via in probes:
            error = forward_error(arch, classes, channels, size, batch_size, aux_head)
            if error is None:
                continue
            if "more than 1 value per channel" in error:
                raise ValueError(
                    f"{batch_field}.schedule.batch_size: 1 cannot train {arch}{via} on {images}: batch norm needs "
                    f"at least 2 samples per batch; set {batch_field}.schedule.batch_size >= 2"
                )
            raise ValueError(
                f"{arch_field}.arch: {arch}{via} cannot run on {images} ({error}); pick another arch"
                + (" or a larger data.image_size" if self.data.takes_image_size() else "")
            )

    def method_settings(self, name: str) -> MethodSettings:
        """The validated settings object of one method entry (parsed once, with the config)."""
        if name not in self.methods:
            raise KeyError(f"no method entry {name!r}: students.methods is {self.students.methods}, methods has {list(self.methods)}")
        return self.methods[name]


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after",)) or "<root>"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid study config {source}:"]
    for e in err.errors():
        path = _field_path(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/config.md for the allowed keys)"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {msg}" if path == "<root>" or msg.startswith(path) else f"  {path}: {msg}")
    return "\n".join(lines)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win key by key; nested mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> StudyConfig:
    """Validate a raw mapping; raises ConfigError naming every bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid study config {source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read, merge overrides into, and validate a study file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"study config {path} is not valid YAML: {err}") from None
    if overrides:
        raw = deep_merge(raw, overrides)
    return parse_config(raw, str(path))
