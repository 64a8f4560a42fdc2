"""The training loop shared by teacher and students: SGD, schedule, replayed augmentation.

Deterministic on CPU given the seed: the model is initialised under `torch.manual_seed`,
the batch order of each epoch comes from a generator seeded by (seed, epoch), and the
augmentation of every sample is a pure function of (augment seed, epoch, index) — the
same function the logit cache replays, so cached teacher logits match the student's
views exactly.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from kdlib import artifacts, distributed, time_account
from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.data.dataset import AnyDataset
from kdlib.metrics import topk_accuracy
from kdlib.objective import Objective

TeacherViews = Callable[[int, Tensor], Any]
"""(epoch, sample indices) -> the teacher's cached tensors for those samples' views in that
epoch: the logits tensor, or a `kdlib.logit_cache.TeacherBatch` for a method reading more
(`kdlib.methods.base.Method.cached`); either has `.to(device)`."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the term and the epoch."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


@dataclass(frozen=True)
class Speed:
    """How `fit` runs on its device; none of it changes what is computed beyond rounding.

    `channels_last`: NHWC memory for the convolutions (what cuDNN's tensor-core kernels
    want); `bf16`: the forward and the losses under bfloat16 autocast (no loss scaling
    needed, unlike fp16); `compile`: `nn.Module.compile`, torch.compile in place, so the
    methods still see their own module class.
    """

    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    @classmethod
    def for_device(cls, device: torch.device, compile: bool = False) -> "Speed":
        """CUDA: channels_last and bf16 autocast, `runtime.compile` as asked. CPU: plain
        fp32, since neither speeds up CPU convolutions, and `runtime.compile` is refused:
        inductor's minutes of C++ compilation never pay back in a CPU run of this size."""
        if device.type == "cuda":
            return cls(channels_last=True, bf16=torch.cuda.is_bf16_supported(), compile=compile)
        if compile:
            raise ValueError(
                f"runtime.compile: true needs a CUDA device (runtime.device resolved to {device.type!r}); set it to false"
            )
        return cls()


def learning_rate(schedule: ScheduleConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Linear warmup per step, then cosine (per step) or multistep (per epoch) decay, of the
    base rate `lr * lr_scale` (`lr_scale`: the official per-arch factor, see `ScheduleConfig`)."""
    base = schedule.lr * schedule.lr_scale
    progress = epoch + step / steps_per_epoch
    if progress < schedule.warmup_epochs:
        return base * (progress + 1 / steps_per_epoch) / schedule.warmup_epochs
    if schedule.scheduler == "cosine":
        span = schedule.epochs - schedule.warmup_epochs
        return 0.5 * base * (1 + math.cos(math.pi * (progress - schedule.warmup_epochs) / span))
    return base * schedule.gamma ** sum(epoch >= m for m in schedule.milestones)


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The batch order of one epoch, a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


@torch.no_grad()
def predict(model: nn.Module, inputs: Tensor, ds: AnyDataset, batch_size: int = 1000, output: int = 0) -> Tensor:
    """Output `output` of the model (0: head 1's logits, -1: the penultimate feature) on
    un-augmented samples of `ds` (uint8 images, or token windows: one row per position), in
    eval mode, as float32 on CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(inputs), batch_size):
        out.append(model(ds.eval_inputs(inputs[start : start + batch_size].to(device)))[output].float().cpu())
    return torch.cat(out)


def make_optimizer(params: list[nn.Parameter], schedule: ScheduleConfig) -> torch.optim.Optimizer:
    """`schedule.optimizer`: SGD with momentum, or AdamW (betas (0.9, 0.95), as nanoGPT trains GPTs)."""
    if schedule.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=schedule.lr, betas=(0.9, 0.95), weight_decay=schedule.weight_decay)
    return torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_top1: float
    timings: list[dict[str, float]]
    """Per epoch computed in this process: `train_seconds` (the optimisation steps), `test_seconds`
    (the test-set predictions), `diagnose_seconds`. Kept apart
    from `history`, which is written into hashed artifacts and so must not hold wall-clock times."""


def fit(
    model: nn.Module,
    method: Objective,
    ds: AnyDataset,
    schedule: ScheduleConfig,
    seed: int,
    augment_config: AugmentConfig,
    teacher_views: TeacherViews | None = None,
    device: torch.device = torch.device("cpu"),
    log: Callable[[str], None] = print,
    label: str = "",
    checkpoint: Path | None = None,
    diagnose: Callable[[nn.Module, int], dict[str, float]] | None = None,
    speed: Speed = Speed(),
    on_epoch: Callable[[dict[str, float], dict[str, float] | None], None] | None = None,
) -> FitResult:
    """Train `model` in place with `method`; evaluates head 1 on the test set each epoch.

    With `checkpoint`, the state after every epoch (model, optimizer, RNG, history) is
    written atomically there, and a run that finds one resumes after its last epoch. The
    batch order and the views are functions of (seed, epoch), so on CPU a resumed run ends
    with exactly the weights of an uninterrupted one.

    `diagnose(model, epoch)`, when given, runs after each epoch's test evaluation; its
    values join that epoch's history record (e.g. `kdlib.diagnostics.Probe`); its time is
    `diagnose_seconds` in `FitResult.timings`, apart from the epoch's `train_seconds`.

    `on_epoch(record, timing)`, when given, is called after each epoch with its history
    record and its timing (`FitResult.timings`), once the record is checkpointed and logged;
    a resumed run first calls it with each restored record and `timing` None. It observes
    (e.g. a live experiment tracker, `tasks.tracking`): nothing it does changes the training.

    `speed` (`Speed.for_device`) picks channels_last, bf16 autocast and torch.compile. Under
    a torchrun process group (`kdlib.distributed`) the model trains under DDP, each rank on
    its shard of every global batch; the history holds the global loss and accuracy, and
    only rank 0 writes the checkpoint and logs.
    """
    if method.needs_teacher and teacher_views is None:
        raise ValueError(f"method {method.name!r} needs teacher logits")
    ranks = distributed.world()[1]
    if ranks > 1:
        _check_ddp(model, method, schedule, ranks, device, log, label)
    model.to(device)
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    trained = distributed.wrap(model, device) if ranks > 1 else model
    if speed.compile:
        trained.compile()
    if not distributed.is_main():
        log, on_epoch = _silent, None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, schedule)
    x_train, y_train = ds.x_train.to(device), ds.y_train.to(device)
    n = len(x_train)
    steps = max(n // schedule.batch_size, 1)
    history: list[dict[str, float]] = []
    best_epoch, best_top1 = 0, -1.0
    resumed = _resume(Path(checkpoint), model, optimizer) if checkpoint is not None else None
    if resumed is not None:
        history, best_epoch, best_top1 = resumed
        log(f"{label} resuming after epoch {len(history)} from {checkpoint}")
        for record in history if on_epoch is not None else ():
            on_epoch(dict(record), None)
    timings: list[dict[str, float]] = []
    for epoch in range(len(history), schedule.epochs):
        started = time.perf_counter()
        with time_account.charge("compute"):
            sums, correct, seen, lr = _train_epoch(
                trained, model, method, ds, x_train, y_train, optimizer, schedule, seed, epoch, steps, augment_config,
                teacher_views, device, speed, label,
            )
        train_seconds = time.perf_counter() - started
        with time_account.charge("evaluation"):
            names = sorted(sums)
            *totals, correct, seen = distributed.all_sum([sums[k] for k in names] + [correct, seen], device)
            sums = {k: total / ranks for k, total in zip(names, totals)}
            test_logits, test_target = predict(method.exported(model), ds.x_test, ds), ds.rows(ds.y_test)
            record = {f"loss/{k}" if k != "loss" else "loss": v / steps for k, v in sums.items()}
            record.update(
                epoch=epoch + 1,
                lr=lr,
                train_top1=100.0 * correct / seen,
                test_top1=topk_accuracy(test_logits, test_target, 1),
                test_nll=torch.nn.functional.cross_entropy(test_logits, test_target).item(),
            )
        timing = {"epoch": epoch + 1, "train_seconds": train_seconds, "test_seconds": time.perf_counter() - started - train_seconds}
        if diagnose is not None:
            diagnose_started = time.perf_counter()
            with time_account.charge("diagnostics"):
                record.update(diagnose(model, epoch))
            timing["diagnose_seconds"] = time.perf_counter() - diagnose_started
        timings.append(timing)
        history.append(record)
        if record["test_top1"] > best_top1:
            best_epoch, best_top1 = epoch + 1, record["test_top1"]
        if checkpoint is not None and distributed.is_main():
            artifacts.save_checkpoint(Path(checkpoint), {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                "history": history, "best_epoch": best_epoch, "best_top1": best_top1,
            })
        log(
            f"{label} epoch {epoch + 1}/{schedule.epochs} loss {record['loss']:.3f} "
            f"train {record['train_top1']:.1f}% test {record['test_top1']:.1f}% "
            f"lr {lr:.4f} ({timing['train_seconds']:.1f}s)"
        )
        if on_epoch is not None:
            on_epoch(dict(record), dict(timing))
    return FitResult(history=history, best_epoch=best_epoch, best_top1=best_top1, timings=timings)


def _train_epoch(
    trained: nn.Module, model: nn.Module, method: Objective, ds: AnyDataset, x_train: torch.Tensor, y_train: torch.Tensor,
    optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, seed: int, epoch: int, steps: int,
    augment_config: AugmentConfig, teacher_views: TeacherViews | None, device: torch.device, speed: Speed, label: str,
) -> tuple[dict[str, float], int, int, float]:
    """One epoch's optimisation steps; returns this rank's summed loss terms, correct, seen and the last lr."""
    method.start_epoch(model, epoch)
    model.train()
    order = epoch_order(seed, epoch, len(x_train))
    sums: dict[str, float] = {}
    correct = seen = 0
    for step in range(steps):
        idx = distributed.shard(order[step * schedule.batch_size : (step + 1) * schedule.batch_size])
        idx_dev = idx.to(device)
        x = ds.train_inputs(x_train[idx_dev], augment_config, epoch, idx)
        if speed.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        target = ds.rows(y_train[idx_dev])
        teacher = teacher_views(epoch, idx).to(device) if method.needs_teacher else None
        lr = learning_rate(schedule, epoch, step, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=speed.bf16):
            logits, terms = method.forward_train(trained, x, target, teacher, epoch)
        loss = sum(terms.values())
        if not distributed.all_true(bool(torch.isfinite(loss)), device):
            bad = [k for k, v in terms.items() if not torch.isfinite(v)]
            raise NonFiniteLossError(f"{label}: loss term(s) {bad} became non-finite at epoch {epoch + 1}, step {step}")
        optimizer.zero_grad(set_to_none=True)
        method.backward(trained, terms)
        optimizer.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        correct += (logits.argmax(1) == target).sum().item()
        seen += len(target)
    return sums, correct, seen, lr


def _resume(
    checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[list[dict[str, float]], int, float] | None:
    """Restore model, optimizer and RNG from `checkpoint`; returns (history, best epoch, best
    top-1), or None to train from scratch: no checkpoint, or one that fails its sha256, that
    `torch.load(weights_only=True)` cannot read or that does not fit this model (quarantined
    with a warning naming it, by rank 0 only; see `kdlib.artifacts.load_checkpoint`)."""
    main = distributed.is_main()
    state = artifacts.load_checkpoint(checkpoint, quarantine_damaged=main)
    if state is None:
        return None
    fresh_model = {k: v.clone() for k, v in model.state_dict().items()}
    fresh_optimizer = copy.deepcopy(optimizer.state_dict())
    try:
        history = [dict(record) for record in state["history"]]
        best_epoch, best_top1 = int(state["best_epoch"]), float(state["best_top1"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        model.load_state_dict(fresh_model)
        optimizer.load_state_dict(fresh_optimizer)
        if main:
            artifacts.discard_checkpoint(checkpoint, f"does not fit this training run ({type(err).__name__}: {str(err)[:200]})")
        return None
    return history, best_epoch, best_top1


def _silent(message: str) -> None:
    """The log of ranks other than 0: one copy of each line is enough."""


def _check_ddp(
    model: nn.Module, method: Objective, schedule: ScheduleConfig, ranks: int, device: torch.device,
    log: Callable[[str], None], label: str,
) -> None:
    """What DDP cannot do here is an error before training starts; what it does differently, a log line."""
    if schedule.batch_size % ranks:
        raise ValueError(f"schedule.batch_size {schedule.batch_size} must be a multiple of the {ranks} DDP ranks")
    if method.shapes_gradients:
        raise ValueError(
            f"runtime.ddp: method {method.name!r} computes its own gradients (Objective.backward), "
            "which DDP does not all-reduce; train it on one process"
        )
    if device.type != "cuda" and distributed.has_batch_norm(model) and distributed.is_main():
        log(f"{label} DDP on {device.type}: batch norm uses each rank's shard statistics (SyncBatchNorm needs CUDA)")
