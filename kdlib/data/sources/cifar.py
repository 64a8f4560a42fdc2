"""``cifar100`` and ``cifar10``: the official CIFAR python archives.

An archive is read without extracting it: members are looked up by exact name, must
be regular files, and are unpickled by ``RestrictedUnpickler``, which refuses every
global but the few numpy ones these files need. ``data.path`` names a local archive;
else ``data.url`` is downloaded once into ``data.root``. Either is read only if its MD5
is the official one, unless ``data.md5_check`` is false. Every way an archive can be
bad (not found, a folder, not a tar, truncated, corrupt, members missing or of the
wrong type, a pickle that is garbled or asks for a forbidden global, arrays of the
wrong shape or dtype, labels out of range) raises ``DataSourceError`` (a ``ValueError``)
whose message starts with the archive (and the member) and says what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import numpy as np
import torch

from kdlib.data.dataset import Dataset, channel_stats
from kdlib.data.sources.base import DataSettings, DataSourceError, MissingDataError, Source

CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_MD5: dict[str, str] = {CIFAR100_ARCHIVE: CIFAR100_MD5, CIFAR10_ARCHIVE: CIFAR10_MD5}


class UnsafeArchiveError(DataSourceError):
    """A data file asked for something a plain data archive never needs."""


class ChecksumError(DataSourceError):
    """A file whose MD5 is not the one expected (not the official archive)."""


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to latin-1: how Python 3 pickles ``bytes`` below protocol 3."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafeArchiveError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    if not isinstance(obj, str):
        raise UnsafeArchiveError("_codecs.encode of a non-string is not allowed")
    return obj.encode("latin-1", errors)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for the CIFAR python batches, refusing every other global.

    The official files are Python 2 pickles of dicts whose values are bytes,
    ints, lists and numpy arrays. Loaded with ``encoding="bytes"``, a numpy
    array needs exactly ``numpy.core.multiarray._reconstruct`` (spelt
    ``numpy._core.multiarray`` when written by numpy >= 2), ``numpy.ndarray``
    and ``numpy.dtype``; both spellings resolve to this numpy's own objects.
    Python 3 writes ``bytes`` at protocol 2 as ``_codecs.encode(s, "latin1")``,
    so that is admitted too, but only for latin-1. Everything else (including
    ``numpy.core.multiarray.scalar``, never used by these files) raises
    ``UnsafeArchiveError`` naming ``module.name`` and the file, before anything
    is called. Persistent ids are refused by ``pickle.Unpickler`` itself.
    """

    _ALLOWED: dict[tuple[str, str], Any] = {}

    def __init__(self, file: IO[bytes], name: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self.name = name

    @classmethod
    def _allowed(cls) -> dict[tuple[str, str], Any]:
        if not cls._ALLOWED:
            reconstruct = _numpy_reconstruct()
            cls._ALLOWED = {
                ("numpy.core.multiarray", "_reconstruct"): reconstruct,
                ("numpy._core.multiarray", "_reconstruct"): reconstruct,
                ("numpy", "ndarray"): np.ndarray,
                ("numpy", "dtype"): np.dtype,
                ("_codecs", "encode"): _latin1_encode,
            }
        return cls._ALLOWED

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed()[(module, name)]
        except KeyError:
            raise UnsafeArchiveError(
                f"{self.name}: refusing to unpickle global {module}.{name}: "
                "only numpy arrays, lists, ints and bytes are expected"
            ) from None


def safe_unpickle(fileobj: IO[bytes], name: str) -> Any:
    """Unpickle ``fileobj`` with ``RestrictedUnpickler``; ``name`` is used in errors.

    Raises ``UnsafeArchiveError`` for a forbidden global and ``DataSourceError``
    for any other malformed pickle, both starting with ``name``.
    """
    try:
        return RestrictedUnpickler(fileobj, name).load()
    except UnsafeArchiveError:
        raise
    except Exception as exc:  # truncated/garbled pickles raise many types
        raise DataSourceError(f"{name}: not a readable pickle ({_why(exc)})") from exc


def _why(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def md5_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raise ``ChecksumError`` (a ``ValueError``) naming the file, expected and actual MD5
    if they differ; ``DataSourceError`` if the file cannot be read."""
    try:
        actual = md5_file(path)
    except OSError as exc:
        raise DataSourceError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if actual != expected.strip().lower():
        raise ChecksumError(f"{path}: MD5 mismatch: expected {expected}, got {actual}")


_CIFAR_LAYOUT: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    # variant: (folder, train members, test members, meta member)
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta"),
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
    ),
}


_KIND = {"cifar100": "CIFAR-100 python archive", "cifar10": "CIFAR-10 python archive"}
MAX_MEMBER_BYTES = 1 << 30
"""A member claiming more is refused before it is read (the largest official one, CIFAR-100's
train, is 155 MB): a modified archive read with ``data.md5_check: false`` cannot fill memory."""


def _read_tar_pickles(archive: Path, names: Sequence[str], kind: str = "CIFAR python archive") -> dict[str, Any]:
    """Unpickle the regular-file members ``names`` of ``archive`` (nothing is extracted).

    Whatever tarfile, gzip, zlib or pickle raise on a damaged file comes back as a
    ``DataSourceError`` starting with ``archive`` (``kind`` says what it should be)."""
    try:
        tf = tarfile.open(archive, "r:*")
    except Exception as exc:  # ReadError (its message lists every compression tried), EOFError, OSError, ...
        empty = archive.is_file() and archive.stat().st_size == 0
        raise DataSourceError(f"{archive}: not a {kind} ({'an empty file' if empty else 'not a tar or tar.gz file'})") from exc
    with tf:
        try:
            members = tf.getmembers()
        except Exception as exc:
            raise DataSourceError(f"{archive}: {_damage(exc)}") from exc
        by_name: dict[str, list[tarfile.TarInfo]] = {}
        for m in members:
            by_name.setdefault(m.name, []).append(m)
        chosen: list[tarfile.TarInfo] = []
        for name in names:
            found = by_name.get(name, [])
            if not found:
                raise DataSourceError(f"{archive}: not a {kind} (member {name} missing{_looks_like(by_name, name)})")
            if len(found) > 1:
                raise UnsafeArchiveError(f"{archive}: {len(found)} members named {name!r}")
            m = found[0]
            if m.issym() or m.islnk():
                raise UnsafeArchiveError(
                    f"{archive}: member {name!r} is a link (to {m.linkname!r}); refusing it"
                )
            if not m.isfile():
                raise UnsafeArchiveError(f"{archive}: member {name!r} is not a regular file")
            if m.size > MAX_MEMBER_BYTES:
                raise UnsafeArchiveError(
                    f"{archive}: member {name} claims {m.size} bytes, more than any CIFAR file ({MAX_MEMBER_BYTES})"
                )
            chosen.append(m)
        out: dict[str, Any] = {}
        for m in sorted(chosen, key=lambda t: t.offset_data):  # forward reads only
            try:
                fh = tf.extractfile(m)
                if fh is None:  # pragma: no cover - isfile() guarantees a file object
                    raise DataSourceError(f"{archive}: cannot read member {m.name}")
                with fh:
                    payload = fh.read()
            except DataSourceError:
                raise
            except Exception as exc:
                raise DataSourceError(f"{archive}: member {m.name}: {_damage(exc)}") from exc
            if len(payload) != m.size:
                raise DataSourceError(f"{archive}: truncated archive (member {m.name} has {len(payload)} of its {m.size} bytes)")
            out[m.name] = safe_unpickle(io.BytesIO(payload), f"{archive}: member {m.name}")
        return out


def _damage(exc: BaseException) -> str:
    """What a failed read of a tar.gz says about it: truncated, or corrupt."""
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "unexpected end" in text or "end-of-stream" in text or "truncated" in text:
        return f"truncated archive ({_why(exc)})"
    return f"corrupt archive ({_why(exc)})"


def _looks_like(by_name: dict[str, list[tarfile.TarInfo]], missing: str) -> str:
    """'; it holds cifar-10-batches-py/: data.source cifar10?' when the archive is the other variant."""
    for variant, (folder, *_rest) in _CIFAR_LAYOUT.items():
        if not missing.startswith(f"{folder}/") and any(n.startswith(f"{folder}/") for n in by_name):
            return f"; it holds {folder}/, the {_KIND[variant]}: data.source {variant}?"
    return ""


def _cifar_field(batch: Any, key: bytes, where: str) -> Any:
    if not isinstance(batch, dict):
        raise DataSourceError(f"{where}: expected a dict, got {type(batch).__name__}")
    if key not in batch:
        raise DataSourceError(f"{where}: missing key {key!r}")
    return batch[key]


def _cifar_images(batch: Any, where: str) -> np.ndarray:
    data = _cifar_field(batch, b"data", where)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise DataSourceError(f"{where}: b'data' must be a uint8 numpy array")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataSourceError(f"{where}: b'data' must have shape (N, 3072), got {data.shape}")
    return data.reshape(-1, 3, 32, 32)  # row-major R, G, B planes of 32 x 32


def _cifar_labels(batch: Any, key: bytes, n: int, num: int, where: str) -> np.ndarray:
    raw = _cifar_field(batch, key, where)
    try:
        labels = np.asarray(raw, dtype=np.int64)
    except Exception as exc:  # TypeError, ValueError, OverflowError from numpy
        raise DataSourceError(f"{where}: {key!r} is not a list of integers ({_why(exc)})") from exc
    if labels.shape != (n,):
        raise DataSourceError(f"{where}: {key!r} has shape {labels.shape}, expected ({n},)")
    if n and (labels.min() < 0 or labels.max() >= num):
        raise DataSourceError(f"{where}: {key!r} has labels outside [0, {num})")
    return labels


def _cifar_names(meta: Any, key: bytes, where: str) -> list[Any]:
    names = _cifar_field(meta, key, where)
    if not isinstance(names, list) or not names:
        raise DataSourceError(f"{where}: {key!r} must be a non-empty list")
    return names


def load_cifar(archive: Path, variant: Literal["cifar10", "cifar100"]) -> Dataset:
    """Load an official CIFAR python archive (``*-python.tar.gz``) without extracting it.

    Members are looked up by exact name, must be regular files (links are
    refused) and are unpickled with ``RestrictedUnpickler`` only. Images come
    back as uint8 (N, 3, 32, 32) in the archive's order, train batches
    concatenated in order. The class count is the length of the label names
    in the meta member. For ``cifar100`` the labels are the fine labels and
    ``coarse_of_class`` is read off the train split (every fine class must
    occur there, always with the same coarse label; the test split must
    agree); for ``cifar10`` it is the identity. Checking the archive's MD5 is
    separate: see ``verify_md5`` and ``CIFAR_MD5``. A bad archive raises
    ``DataSourceError`` starting with ``archive`` (``MissingDataError``, also a
    ``FileNotFoundError``, when there is none).
    """
    archive = Path(archive)
    if variant not in _CIFAR_LAYOUT:
        raise ValueError(f"variant must be 'cifar10' or 'cifar100', got {variant!r}")
    if archive.is_dir():
        raise DataSourceError(f"{archive}: a folder, not the {_KIND[variant]} (give the .tar.gz itself, not extracted)")
    if not archive.is_file():
        raise MissingDataError(f"{archive}: CIFAR archive not found")
    folder, train_names, test_names, meta_name = _CIFAR_LAYOUT[variant]
    member = {n: f"{folder}/{n}" for n in (*train_names, *test_names, meta_name)}
    pickles = _read_tar_pickles(archive, list(member.values()), _KIND[variant])

    def where(n: str) -> str:
        return f"{archive}: member {member[n]}"

    meta = pickles[member[meta_name]]
    if variant == "cifar100":
        num_classes = len(_cifar_names(meta, b"fine_label_names", where(meta_name)))
        num_coarse = len(_cifar_names(meta, b"coarse_label_names", where(meta_name)))
        fine_key = b"fine_labels"
    else:
        num_classes = len(_cifar_names(meta, b"label_names", where(meta_name)))
        num_coarse = num_classes
        fine_key = b"labels"

    def split(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        xs, ys, cs = [], [], []
        for n in names:
            batch = pickles[member[n]]
            x = _cifar_images(batch, where(n))
            xs.append(x)
            ys.append(_cifar_labels(batch, fine_key, x.shape[0], num_classes, where(n)))
            if variant == "cifar100":
                cs.append(_cifar_labels(batch, b"coarse_labels", x.shape[0], num_coarse, where(n)))
        coarse = np.concatenate(cs) if cs else None
        if not sum(len(x) for x in xs):
            raise DataSourceError(f"{archive}: no images in {', '.join(member[n] for n in names)}")
        return np.concatenate(xs), np.concatenate(ys), coarse

    x_train, y_train, c_train = split(train_names)
    x_test, y_test, c_test = split(test_names)

    if variant == "cifar100":
        assert c_train is not None and c_test is not None
        coarse_of_class = np.full(num_classes, -1, dtype=np.int64)
        for fine, coarse in sorted(set(zip(y_train.tolist(), c_train.tolist(), strict=True))):
            if coarse_of_class[fine] not in (-1, coarse):
                raise DataSourceError(
                    f"{where(train_names[0])}: fine class {fine} has more than one coarse "
                    f"label ({coarse_of_class[fine]} and {coarse})"
                )
            coarse_of_class[fine] = coarse
        absent = np.flatnonzero(coarse_of_class < 0).tolist()
        if absent:
            raise DataSourceError(
                f"{where(train_names[0])}: fine classes {absent} never occur in the train "
                "split, so their coarse class is unknown"
            )
        if not np.array_equal(coarse_of_class[y_test], c_test):
            raise DataSourceError(
                f"{where(test_names[0])}: coarse labels disagree with the train split's "
                "fine->coarse mapping"
            )
    else:
        coarse_of_class = np.arange(num_classes, dtype=np.int64)

    xt = torch.from_numpy(np.ascontiguousarray(x_train))
    mean, std = channel_stats(xt)
    ds = Dataset(
        x_train=xt,
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        num_classes=num_classes,
        coarse_of_class=torch.from_numpy(coarse_of_class),
        mean=mean,
        std=std,
        name=variant,
    )
    ds.validate()
    return ds


def download(url: str, dest: Path, md5_check: bool = True) -> Path:
    """Fetch an official archive once, to a temporary name, and keep it only if its MD5 is
    right (whatever it is with ``md5_check=False``). Errors are ``DataSourceError``s
    starting with ``url``; nothing is kept after one."""
    expected = CIFAR_MD5[dest.name]
    if dest.is_file():
        if md5_check:
            try:
                verify_md5(dest, expected)
            except ChecksumError as err:
                raise ChecksumError(f"{url}: {err} (an earlier download kept there? delete it to download again)") from err
        return dest
    tmp = dest.with_name(f".{dest.name}.download")
    print(f"prepare_data: downloading {url} -> {dest}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        urllib.request.urlretrieve(url, tmp)
        actual = md5_file(tmp)
    except Exception as exc:  # URLError, HTTPError, OSError, ValueError, ...
        tmp.unlink(missing_ok=True)
        raise DataSourceError(f"{url}: download failed ({_why(exc)})") from exc
    if md5_check and actual != expected:
        tmp.unlink()
        raise ChecksumError(f"{url}: MD5 mismatch: expected {expected} (the official {dest.name}), got {actual}; nothing was kept")
    tmp.replace(dest)
    return dest


class _Cifar(Source):
    """An official archive: ``data.path``, else ``data.url`` downloaded into ``data.root``."""

    archive: ClassVar[str]
    num_classes: ClassVar[int]

    @classmethod
    def check(cls, data: DataSettings) -> None:
        if data.path is None and data.url is None:
            raise ValueError(f"data.path or data.url is needed for source {cls.name!r} (the official python archive)")
        if data.url is not None and not data.url.startswith(("https://", "http://", "file://")):
            raise ValueError(f"data.url must be an http(s):// or file:// URL, got {data.url!r}")
        if data.path is not None and Path(data.path).is_dir():
            raise ValueError(
                f"data.path {data.path}: a folder; source {cls.name!r} reads the official archive itself "
                f"({cls.archive}, not extracted)"
            )
        if data.path is not None and Path(data.path).exists() and not Path(data.path).is_file():
            raise ValueError(f"data.path {data.path}: not a regular file (a device or a pipe would never end)")

    @classmethod
    def input_shape(cls, data: DataSettings) -> tuple[int, int, int]:
        return 3, 32, cls.num_classes

    @classmethod
    def build(cls, data: DataSettings) -> Dataset:
        """The archive of ``data.path`` (its MD5 checked first, unless ``data.md5_check`` is
        false), else ``data.url``'s download. Errors name the field: ``data.path <file>: ...``."""
        if data.path:
            archive = Path(data.path)
            try:
                if data.md5_check:
                    verify_md5(archive, CIFAR_MD5[cls.archive])
                return load_cifar(archive, cls.name)  # type: ignore[arg-type]
            except ChecksumError as err:
                raise ChecksumError(
                    f"data.path {err} (not the official {cls.archive}); to read a modified archive, "
                    "set data.md5_check: false"
                ) from err
            except DataSourceError as err:
                raise type(err)(f"data.path {err}") from err
        assert data.url is not None  # check() refuses neither
        try:
            archive = download(data.url, Path(data.root) / cls.archive, data.md5_check)
        except DataSourceError as err:
            raise type(err)(f"data.url {err}") from err
        try:
            return load_cifar(archive, cls.name)  # type: ignore[arg-type]
        except DataSourceError as err:
            raise type(err)(f"data.url {data.url}: {err}") from err


class Cifar100(_Cifar):
    """CIFAR-100: 100 fine classes in 20 superclasses, 3x32x32."""

    name = "cifar100"
    archive = CIFAR100_ARCHIVE
    num_classes = 100


class Cifar10(_Cifar):
    """CIFAR-10: 10 classes, 3x32x32."""

    name = "cifar10"
    archive = CIFAR10_ARCHIVE
    num_classes = 10
