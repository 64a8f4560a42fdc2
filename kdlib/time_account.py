"""Where one step's wall time went: its phases, timed in the step's own thread.

A step opens a `TimeAccount` for its whole run (`opened`); code anywhere below charges the
time of a block to a phase with `charge(name)` (or the `charged(name)` decorator), which is
a no-op when no account is open in the thread. Phases nest: a block charged inside another
pauses the outer phase, so every second is counted once. What no block claims is `other`.

The record is wall-clock data: it goes to logs and MLflow, never into a hashed artifact.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import time
from typing import Any, Callable, Iterator, TypeVar

PHASES = ("startup", "data", "compute", "diagnostics", "evaluation", "writing", "tracking")
"""startup: process start and imports (0 for a step run in an already warm process); data:
reading the data set and caches; compute: training steps; diagnostics: per-epoch probes;
evaluation: test-set predictions and metrics; writing: artifacts and checkpoints; tracking:
MLflow. Everything else (building models, hashing keys, ...) is `other`."""
WORK = ("data", "compute", "diagnostics", "evaluation", "writing")
"""The phases that are the step's own work; the rest (startup, tracking, other) is overhead."""

_CURRENT: contextvars.ContextVar["TimeAccount | None"] = contextvars.ContextVar("time_account", default=None)
F = TypeVar("F", bound=Callable[..., Any])


def process_started(pid: int | str = "self") -> float:
    """When a process (this one by default) started (Unix time), from /proc on Linux; elsewhere, now."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            ticks = int(fh.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


class TimeAccount:
    """Seconds per phase of one step run, from `started` (Unix time) until `record()`.

    Time between `started` and the account's creation is `startup`."""

    def __init__(self, step: str, entry: str = "", started: float | None = None) -> None:
        now = time.time()
        self.step, self.entry = step, entry
        self.started = now if started is None else min(started, now)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds["startup"] = now - self.started
        self._stack: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the block to `name`, pausing the phase it runs inside."""
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r}; one of {PHASES}")
        now = time.perf_counter()
        if self._stack:
            outer, since = self._stack[-1]
            self.seconds[outer] += now - since
        self._stack.append((name, now))
        try:
            yield
        finally:
            now = time.perf_counter()
            inner, since = self._stack.pop()
            self.seconds[inner] += now - since
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], now)

    def record(self, **extra: Any) -> dict[str, Any]:
        """The account so far: wall, seconds per phase, `other` (the unclaimed rest) and `work`."""
        ended = time.time()
        wall = ended - self.started
        seconds = {k: round(v, 4) for k, v in self.seconds.items()}
        return {
            "step": self.step, "entry": self.entry, "started": self.started, "ended": ended, "wall": round(wall, 4),
            "seconds": seconds, "other": round(max(wall - sum(self.seconds.values()), 0.0), 4),
            "work": round(sum(self.seconds[k] for k in WORK), 4), **extra,
        }


def current() -> TimeAccount | None:
    """The account open in this thread (or task context), if any."""
    return _CURRENT.get()


def activate(account: TimeAccount) -> None:
    """Make `account` the one `charge` adds to from here on (a process that is one step)."""
    _CURRENT.set(account)


@contextlib.contextmanager
def opened(account: TimeAccount) -> Iterator[TimeAccount]:
    """Make `account` the one `charge` adds to, for the block."""
    token = _CURRENT.set(account)
    try:
        yield account
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def charge(name: str) -> Iterator[None]:
    """Charge the block to phase `name` of the open account; nothing when none is open."""
    account = _CURRENT.get()
    if account is None:
        yield
        return
    with account.phase(name):
        yield


def charged(name: str) -> Callable[[F], F]:
    """Decorator: every call of the function is charged to phase `name` (see `charge`)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with charge(name):
                return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
