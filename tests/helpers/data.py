"""Data written the way real sources are, for the data and pipeline tests.

The CIFAR fixtures are tiny archives in the exact official layout. Their pickles
are written the way the originals were (Python 2, protocol 2: byte strings as
``BINSTRING``, numpy arrays via ``numpy.core.multiarray._reconstruct``); one
test also covers a plain Python 3 protocol-2 pickle.
"""

from __future__ import annotations

import copy
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch

from kdlib.data.dataset import Dataset
from tests.helpers.study import TINY_LM_STUDY, TINY_STUDY


def same_dataset(a: Dataset, b: Dataset) -> bool:
    return all(
        torch.equal(getattr(a, f), getattr(b, f))
        for f in ("x_train", "y_train", "x_test", "y_test", "coarse_of_class")
    ) and (a.mean, a.std, a.num_classes) == (b.mean, b.std, b.num_classes)


def study_with_data(**data: object) -> dict:
    """The tiny study (its token twin for the `text` source) with `data` replaced."""
    raw = copy.deepcopy(TINY_LM_STUDY if data.get("source") == "text" else TINY_STUDY)
    raw["data"] = data
    return raw


# -----------------------------------------------------------------------------
# Pickles and archives in the official CIFAR layout


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]  # pure-Python pickler
    """Protocol-2 pickler writing ``bytes`` as Python 2 ``str`` (no ``_codecs.encode``)."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle(obj: object) -> bytes:
    """Pickle ``obj`` as CIFAR's Python 2 / numpy 1 files are pickled."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue()
    assert b"_codecs" not in data
    # numpy >= 2 names the module numpy._core; the originals say numpy.core.
    return data.replace(
        b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
    )


def add_bytes(tf: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tf.addfile(info, io.BytesIO(payload))


def add_link(tf: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tf.addfile(info)


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, payload in members.items():
            add_bytes(tf, name, payload)
    return path


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


# CIFAR-100 fixture: 4 fine classes in 2 coarse classes, fine k -> coarse k // 2.
FINE = [b"apple", b"pear", b"bus", b"train"]
COARSE = [b"fruit", b"vehicles"]


def cifar100_members(pickler=py2_pickle, train_override: bytes | None = None) -> dict[str, bytes]:
    x_train, x_test = images(6, 0), images(3, 1)
    x_train[2, 1 * 1024 + 5 * 32 + 7] = 201  # G plane, row 5, col 7 of train image 2
    fine_train, fine_test = [0, 1, 2, 3, 1, 2], [3, 0, 1]
    train = {
        b"filenames": [b"img%d.png" % i for i in range(6)],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": fine_train,
        b"coarse_labels": [k // 2 for k in fine_train],
        b"data": x_train,
    }
    test = {
        b"filenames": [b"t%d.png" % i for i in range(3)],
        b"batch_label": b"testing batch 1 of 1",
        b"fine_labels": fine_test,
        b"coarse_labels": [k // 2 for k in fine_test],
        b"data": x_test,
    }
    meta = {b"fine_label_names": FINE, b"coarse_label_names": COARSE}
    return {
        "cifar-100-python/file.txt~": b"",
        "cifar-100-python/train": train_override or pickler(train),
        "cifar-100-python/test": pickler(test),
        "cifar-100-python/meta": pickler(meta),
    }


def cifar10_members() -> dict[str, bytes]:
    members = {"cifar-10-batches-py/readme.html": b"<html></html>"}
    members["cifar-10-batches-py/batches.meta"] = py2_pickle(
        {
            b"num_cases_per_batch": 2,
            b"label_names": [b"c%d" % k for k in range(10)],
            b"num_vis": 3072,
        }
    )
    for i in range(1, 6):
        x = images(2, 10 + i)
        x[:, 0] = i  # R plane, row 0, col 0 marks the batch
        batch = {
            b"batch_label": b"training batch %d of 5" % i,
            b"labels": [2 * i - 2, 2 * i - 1],
            b"data": x,
            b"filenames": [b"a.png", b"b.png"],
        }
        members[f"cifar-10-batches-py/data_batch_{i}"] = py2_pickle(batch)
    x = images(3, 99)
    x[1, 2 * 1024 + 31 * 32 + 31] = 77  # B plane, last row, last col of test image 1
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": [9, 0, 4], b"data": x,
            b"filenames": [b"x.png", b"y.png", b"z.png"]}
    members["cifar-10-batches-py/test_batch"] = py2_pickle(test)
    return members


# -----------------------------------------------------------------------------
# Image folders


def write_image(path: Path, size: tuple[int, int], colour, mode: str = "RGB", fmt: str = "PNG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)
