"""Atomic writes and manifests: an artifact folder is complete only once its manifest exists.

Every file is written to a temporary name in its own folder and renamed into place, so
an interrupted step never leaves a half-written file under a real name; the manifest,
with a sha256 per file, is written last and checked (shape and hashes) on read.

Every write here goes through one guard (`check_writable`): once a task has named the
allowed roots (`allow_writes_under` / `writes_under`: the project directory and the study's
store), a path that resolves outside them is refused. A damaged artifact folder or
checkpoint is never deleted: `quarantine` moves it aside. Training checkpoints carry the
sha256 of their payload (`save_checkpoint` / `load_checkpoint`).
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import torch

from kdlib import time_account

MANIFEST = "manifest.json"
QUARANTINE = "quarantine"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

_write_roots: contextvars.ContextVar[tuple[Path, ...] | None] = contextvars.ContextVar("kdflow_write_roots", default=None)


def allow_writes_under(*roots: Path | str) -> contextvars.Token:
    """From now on (in this thread / context), refuse writes that resolve outside `roots`.

    Roots are resolved now (a relative one against the current directory). Without a call,
    writes are not restricted (the library used on its own, e.g. by tests)."""
    return _write_roots.set(tuple(dict.fromkeys(Path(r).resolve() for r in roots)))


@contextlib.contextmanager
def writes_under(*roots: Path | str) -> Iterator[None]:
    """`allow_writes_under` for the duration of a block, then the previous roots again."""
    token = allow_writes_under(*roots)
    try:
        yield
    finally:
        _write_roots.reset(token)


def write_roots() -> tuple[Path, ...] | None:
    """The resolved roots writes are allowed under; None: unrestricted."""
    return _write_roots.get()


def check_writable(path: Path | str) -> Path:
    """`path` if it resolves (symbolic links followed) under an allowed root, else ValueError naming it."""
    path = Path(path)
    roots = _write_roots.get()
    if roots is None:
        return path
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ValueError(
            f"refusing to write {path}: it resolves to {resolved}, outside the allowed roots "
            f"({', '.join(map(str, roots))}: the project directory and runtime.store)"
        )
    return path


@time_account.charged("writing")
def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(path: Path, obj: dict[str, Any]) -> None:
    """`torch.save` through a file handle: given a path, torch names the zip records after
    the (random) temporary file, so the same tensors would hash differently on every build."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    _atomic(Path(path), write)


def _quarantine_root(path: Path) -> Path:
    """The deepest allowed root that holds `path` (the store, for a checkpoint or a store
    folder), else the folder `path` is in."""
    resolved = path.resolve()
    holding = [root for root in (_write_roots.get() or ()) if resolved.is_relative_to(root)]
    return max(holding, key=lambda root: len(root.parts)) if holding else resolved.parent


def quarantine(path: Path, reason: str, root: Path | None = None) -> Path:
    """Move a damaged artifact folder or file aside, never delete it: to
    `<root>/quarantine/<path relative to root>-<UTC timestamp>`, with a warning on stderr
    naming both paths. `root`: the store or artifacts root (default: the deepest allowed
    write root holding `path`, else its folder). Call it only under the lock that guards `path`."""
    path = Path(path)
    root = Path(root).resolve() if root is not None else _quarantine_root(path)
    resolved = path.resolve()
    relative = resolved.relative_to(root) if resolved.is_relative_to(root) else Path(resolved.name)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    dest = root / QUARANTINE / f"{relative}-{stamp}"
    check_writable(path)
    check_writable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(path, dest)
    print(f"warning: {path} {reason}; moved it to {dest}", file=sys.stderr, flush=True)
    return dest


CHECKPOINT_HEADER = b"KDFLOW-CHECKPOINT sha256="
"""A checkpoint file: this header, the payload's sha256 (64 hex), a newline, then the payload
(`torch.save` bytes); one file, written atomically, so the hash can never be stale."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint with the sha256 of its payload in its header (atomically)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = CHECKPOINT_HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n"

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())

    _atomic(Path(path), write)


def checkpoint_problem(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(state, None) for a checkpoint that verifies and loads, else (None, what is wrong with it)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    size = len(CHECKPOINT_HEADER) + 64 + 1
    digest = data[len(CHECKPOINT_HEADER) : size - 1].decode("ascii", "replace")
    if not data.startswith(CHECKPOINT_HEADER) or data[size - 1 : size] != b"\n" or not SHA256_HEX.fullmatch(digest):
        return None, f"is not a checkpoint with a sha256 header ({len(data)} bytes: cut short, or an old or foreign file)"
    payload = memoryview(data)[size:]
    if hashlib.sha256(payload).hexdigest() != digest:
        return None, f"does not match its sha256 ({len(data)} bytes: truncated or altered)"
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch.load cannot read is damage here
        return None, f"cannot be read by torch.load(weights_only=True) ({type(err).__name__}: {str(err)[:200]})"
    if not isinstance(state, dict):
        return None, f"holds a {type(state).__name__}, not a checkpoint's dict"
    return state, None


def load_checkpoint(path: Path, quarantine_damaged: bool = True) -> dict[str, Any] | None:
    """The state saved by `save_checkpoint`, or None: no file, or a damaged one (wrong or
    missing hash, unreadable by `torch.load(weights_only=True)`), which is quarantined
    (`quarantine_damaged`) with a warning. A checkpoint is only a resume point: the caller
    trains from scratch. Call it under the checkpoint's lock."""
    path = Path(path)
    if not path.is_file():
        return None
    state, problem = checkpoint_problem(path)
    if problem is not None:
        if quarantine_damaged:
            discard_checkpoint(path, problem)
        return None
    return state


def discard_checkpoint(path: Path, problem: str) -> None:
    """Quarantine a checkpoint that cannot be resumed from; training starts from scratch."""
    quarantine(Path(path), f"(training checkpoint) {problem}; training starts from scratch")


@time_account.charged("data")
def load_tensors(path: Path) -> dict[str, Any]:
    """Load a file written by `save_tensors`; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact {path} not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_digest(path: Path, memo: Path) -> str:
    """sha256 of a data source's content: a file's bytes, or a folder's sorted list of
    (relative path, size, sha256) of every non-hidden file below it.

    Each file's sha256 is remembered in the JSON file `memo` under its resolved path with
    its size and mtime, so an unchanged multi-GB archive or image folder is not read again
    on every run; a file replaced at the same path changes size or mtime and is re-read.
    """
    path = Path(path).resolve()
    memo = Path(memo)
    try:
        known = json.loads(memo.read_text()) if memo.is_file() else {}
    except ValueError:
        known = {}
    changed = False

    def file_digest(file: Path) -> tuple[int, str]:
        nonlocal changed
        stat = file.stat()
        entry = known.get(str(file))
        if entry is None or entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(file)}
            known[str(file)] = entry
            changed = True
        return entry["size"], entry["sha256"]

    if path.is_file():
        digest = file_digest(path)[1]
    else:
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        digest = hash_json([(p.relative_to(path).as_posix(), *file_digest(p)) for p in files])
    if changed:
        write_json(memo, known)
    return digest


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_manifest(
    out_dir: Path, step: str, key: str, meta: dict[str, Any], final_dir: Path | None = None
) -> dict[str, Any]:
    """Hash every file of `out_dir` and write the manifest last. `final_dir`: where the folder
    will live (`staged_dir` builds it elsewhere first); the manifest records that path."""
    out_dir = Path(out_dir)
    files = {
        p.relative_to(out_dir).as_posix(): sha256_file(p)
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest = {"step": step, "key": key, "dir": str(final_dir or out_dir), "files": files, "meta": meta}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def manifest_problem(manifest: Any) -> str | None:
    """What is wrong with the shape of a parsed manifest, None if nothing: an object with
    `step` and `key` strings, `files` an object of relative file name -> sha256 (64 hex),
    `meta` an object."""
    if not isinstance(manifest, dict):
        return f"expected a JSON object with step, key, files and meta, got {type(manifest).__name__}"
    for field, kind, what in (("step", str, "a string"), ("key", str, "a string"),
                              ("files", dict, "an object of file name -> sha256"), ("meta", dict, "an object")):
        if field not in manifest:
            return f"'{field}' is missing"
        if not isinstance(manifest[field], kind):
            return f"'{field}' must be {what}, got {type(manifest[field]).__name__}"
    for name, digest in manifest["files"].items():
        parts = PurePosixPath(name).parts
        if not name or name.startswith("/") or "\\" in name or ".." in parts or name == MANIFEST:
            return f"files: {name!r} is not a file name inside the folder"
        if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            return f"files: {name!r} must map to a sha256 (64 lowercase hex digits), got {digest!r}"
    return None


def read_manifest(out_dir: Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of a finished artifact folder; its shape is always checked and, with
    `verify`, every file's hash. Anything wrong is a ValueError naming the path."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the step that writes {out_dir} has not finished")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        raise ValueError(f"{path} is not a valid manifest: {err}") from None
    problem = manifest_problem(manifest)
    if problem is not None:
        raise ValueError(f"{path} is not a valid manifest: {problem}")
    manifest["dir"] = str(out_dir)
    if verify:
        for name, digest in manifest["files"].items():
            file = out_dir / name
            if not file.is_file() or sha256_file(file) != digest:
                raise ValueError(f"artifact {file} is missing or does not match its manifest hash")
    return manifest


def is_complete(out_dir: Path) -> bool:
    try:
        read_manifest(out_dir, verify=True)
    except (FileNotFoundError, ValueError):
        return False
    return True


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (flock; released when the process dies).

    Two pipeline runs on one project (two flow runs, or a flow and `dvc repro`) take the
    same lock before building the same artifact, so they never write it at once.
    """
    lock_path = check_writable(Path(lock_path))
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {lock_path} (another run is building this artifact)", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Build a whole folder in a temporary sibling, then swap it in for `out_dir` at once.

    Yields the temporary folder (write `final_dir=out_dir` into its manifest). On success the
    new folder takes `out_dir`'s place in one atomic exchange (Linux `renameat2`; elsewhere
    two renames) and the old one is removed; on any error the temporary folder is removed and
    `out_dir` is left as it was. A crash leaves at most a hidden `.<name>.*.staging` folder.
    """
    out_dir = check_writable(Path(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".staging", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if not os.path.lexists(out_dir):
            os.rename(tmp, out_dir)
        else:
            _exchange(tmp, out_dir)
    finally:
        if os.path.lexists(tmp):  # the old folder after a swap, or the new one after an error
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()


def _exchange(new: Path, old: Path) -> None:
    """Swap two paths atomically (`renameat2(RENAME_EXCHANGE)`); without it, move `old` aside
    and `new` into its place (for an instant neither name exists)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(old), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(old))
    aside = new.with_name(new.name + ".old")
    os.rename(old, aside)
    try:
        os.rename(new, old)
    except BaseException:
        os.rename(aside, old)
        raise
    os.rename(aside, new)
