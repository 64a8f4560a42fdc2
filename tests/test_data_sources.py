"""Tests for the file-based loaders in kdlib.data: CIFAR archives, MD5s, image folders.

The CIFAR fixtures are tiny archives in the exact official layout. Their pickles
are written the way the originals were (Python 2, protocol 2: byte strings as
``BINSTRING``, numpy arrays via ``numpy.core.multiarray._reconstruct``); one
test also covers a plain Python 3 protocol-2 pickle.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.data import (
    CIFAR10_MD5,
    CIFAR100_MD5,
    CIFAR_MD5,
    RestrictedUnpickler,
    UnsafeArchiveError,
    load_cifar,
    load_imagefolder,
    md5_file,
    safe_unpickle,
    verify_md5,
)

# -----------------------------------------------------------------------------
# Helpers: pickles and archives in the official layout


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
# CIFAR loading


def test_py2_fixture_needs_only_the_numpy_globals() -> None:
    import pickletools

    data = cifar100_members()["cifar-100-python/train"]
    globals_ = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


def test_load_cifar100(tmp_path: Path) -> None:
    members = cifar100_members()
    archive = write_tar(tmp_path / "cifar-100-python.tar.gz", members)
    ds = load_cifar(archive, "cifar100")
    assert ds.name == "cifar100"
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (3, 3, 32, 32)
    assert ds.y_train.tolist() == [0, 1, 2, 3, 1, 2] and ds.y_train.dtype == torch.int64
    assert ds.y_test.tolist() == [3, 0, 1]
    assert ds.num_classes == 4 and ds.num_superclasses == 2
    assert ds.coarse_of_class.tolist() == [0, 0, 1, 1]
    assert int(ds.x_train[2, 1, 5, 7]) == 201
    # Whole-array layout: row-major R, G, B planes of 32 x 32.
    raw = safe_unpickle(io.BytesIO(members["cifar-100-python/train"]), "train")
    assert torch.equal(ds.x_train, torch.from_numpy(raw[b"data"].reshape(6, 3, 32, 32)))
    assert len(ds.mean) == 3 and len(ds.std) == 3
    assert abs(ds.mean[0] - raw[b"data"][:, :1024].mean() / 255.0) < 1e-9
    ds.validate()


def test_load_cifar10(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "cifar-10-python.tar.gz", cifar10_members())
    ds = load_cifar(archive, "cifar10")
    assert ds.name == "cifar10"
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.y_train.tolist() == list(range(10))  # batches concatenated in order 1..5
    assert ds.x_train[:, 0, 0, 0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert ds.y_test.tolist() == [9, 0, 4]
    assert int(ds.x_test[1, 2, 31, 31]) == 77
    assert ds.num_classes == 10
    assert ds.coarse_of_class.tolist() == list(range(10))


def test_load_cifar_python3_protocol2_pickles(tmp_path: Path) -> None:
    """Python 3 writes bytes at protocol 2 via _codecs.encode(s, 'latin1'): admitted."""
    members = cifar100_members(pickler=lambda obj: pickle.dumps(obj, protocol=2))
    assert b"_codecs" in members["cifar-100-python/train"]
    ds = load_cifar(write_tar(tmp_path / "c.tar.gz", members), "cifar100")
    assert int(ds.x_train[2, 1, 5, 7]) == 201
    assert ds.coarse_of_class.tolist() == [0, 0, 1, 1]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_before_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker)}, protocol=2)
    # Sanity: the payload really would run the command if unpickled normally.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    archive = write_tar(tmp_path / "evil.tar.gz", cifar100_members(train_override=payload))
    with pytest.raises(UnsafeArchiveError) as info:
        load_cifar(archive, "cifar100")
    msg = str(info.value)
    assert f"{os.system.__module__}.system" in msg  # posix.system on Linux
    assert "cifar-100-python/train" in msg and str(archive) in msg
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, refused",
    [
        (b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x00\x85R.", "builtins.eval"),
        (b"\x80\x02cnumpy.core.multiarray\nscalar\n.", "numpy.core.multiarray.scalar"),
        (b"\x80\x02cnumpy\nload\n.", "numpy.load"),
    ],
)
def test_restricted_unpickler_refuses_other_globals(payload: bytes, refused: str) -> None:
    with pytest.raises(UnsafeArchiveError, match=refused.replace(".", r"\.")) as info:
        safe_unpickle(io.BytesIO(payload), "some/file")
    assert "some/file" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_codecs_encode_only_latin1() -> None:
    ok = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R."
    assert safe_unpickle(io.BytesIO(ok), "f") == b"\xff"
    bad = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(UnsafeArchiveError, match="zlib"):
        safe_unpickle(io.BytesIO(bad), "f")
    assert RestrictedUnpickler(io.BytesIO(b"\x80\x02K\x05."), "f").load() == 5


def test_garbled_pickle_is_a_value_error_naming_the_file(tmp_path: Path) -> None:
    members = cifar100_members(train_override=b"\x80\x02}q\x00(U\x04data")
    archive = write_tar(tmp_path / "trunc.tar.gz", members)
    with pytest.raises(ValueError, match="cannot unpickle .*cifar-100-python/train"):
        load_cifar(archive, "cifar100")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_member_is_refused(tmp_path: Path, kind: bytes) -> None:
    members = cifar100_members()
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        add_bytes(tf, "cifar-100-python/test", members["cifar-100-python/test"])
        add_bytes(tf, "cifar-100-python/meta", members["cifar-100-python/meta"])
        add_link(tf, "cifar-100-python/train", "cifar-100-python/test", kind)
    with pytest.raises(UnsafeArchiveError, match="cifar-100-python/train.*link") as info:
        load_cifar(archive, "cifar100")
    assert str(archive) in str(info.value)


def test_missing_member_and_archive(tmp_path: Path) -> None:
    members = cifar100_members()
    del members["cifar-100-python/meta"]
    archive = write_tar(tmp_path / "nometa.tar.gz", members)
    with pytest.raises(ValueError, match="has no member 'cifar-100-python/meta'") as info:
        load_cifar(archive, "cifar100")
    assert str(archive) in str(info.value)
    with pytest.raises(ValueError, match="has no member 'cifar-10-batches-py/"):
        load_cifar(archive, "cifar10")  # wrong variant for this archive
    with pytest.raises(FileNotFoundError):
        load_cifar(tmp_path / "absent.tar.gz", "cifar100")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="junk.tar.gz"):
        load_cifar(tmp_path / "junk.tar.gz", "cifar100")
    with pytest.raises(ValueError, match="variant"):
        load_cifar(archive, "cifar1000")  # type: ignore[arg-type]


def test_inconsistent_coarse_mapping(tmp_path: Path) -> None:
    train = {
        b"fine_labels": [0, 0, 1, 2, 3],
        b"coarse_labels": [0, 1, 0, 1, 1],  # fine 0 -> coarse 0 and 1
        b"data": images(5, 3),
    }
    members = cifar100_members(train_override=py2_pickle(train))
    archive = write_tar(tmp_path / "c.tar.gz", members)
    with pytest.raises(ValueError, match="fine class 0 has more than one coarse"):
        load_cifar(archive, "cifar100")


def test_wrong_data_dtype_is_refused(tmp_path: Path) -> None:
    train = {b"fine_labels": [0, 1, 2, 3], b"coarse_labels": [0, 0, 1, 1],
             b"data": np.zeros((4, 3072), dtype=np.float32)}
    archive = write_tar(tmp_path / "c.tar.gz", cifar100_members(train_override=py2_pickle(train)))
    with pytest.raises(ValueError, match="uint8"):
        load_cifar(archive, "cifar100")


# -----------------------------------------------------------------------------
# MD5


def test_md5(tmp_path: Path) -> None:
    f = tmp_path / "cifar-100-python.tar.gz"
    f.write_bytes(b"hello world" * 100_000)
    actual = hashlib.md5(f.read_bytes()).hexdigest()
    assert md5_file(f) == actual
    verify_md5(f, actual)
    verify_md5(f, actual.upper())
    with pytest.raises(ValueError) as info:
        verify_md5(f, CIFAR100_MD5)
    msg = str(info.value)
    assert str(f) in msg and CIFAR100_MD5 in msg and actual in msg
    assert CIFAR_MD5 == {
        "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    }
    assert CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"


# -----------------------------------------------------------------------------
# Image folders


def _png(path: Path, size: tuple[int, int], colour, mode: str = "RGB", fmt: str = "PNG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "flowers"
    # Class names chosen so that sorted order differs from creation order.
    _png(root / "train" / "zinnia" / "a.png", (10, 7), (255, 0, 0))
    _png(root / "train" / "zinnia" / "b.PNG", (40, 40), (0, 0, 255, 128), mode="RGBA")
    _png(root / "train" / "aster" / "x.jpg", (16, 12), (0, 200, 0), fmt="JPEG")
    _png(root / "train" / "aster" / "y.png", (5, 9), 90, mode="L")
    (root / "train" / "aster" / "notes.txt").write_text("ignored")
    _png(root / "test" / "zinnia" / "t.jpeg", (33, 20), (10, 20, 30), fmt="JPEG")
    _png(root / "test" / "aster" / "u.png", (8, 8), (1, 2, 3))
    return root


def test_load_imagefolder(folder: Path) -> None:
    ds = load_imagefolder(folder, 6)
    assert ds.x_train.shape == (4, 3, 6, 6) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (2, 3, 6, 6)
    assert ds.num_classes == 2 and ds.coarse_of_class.tolist() == [0, 1]
    # aster (0) before zinnia (1); files in name order within a class.
    assert ds.y_train.tolist() == [0, 0, 1, 1] and ds.y_train.dtype == torch.int64
    assert ds.y_test.tolist() == [0, 1]
    x = ds.x_train
    jpeg_green = x[0].to(torch.int64)
    assert (jpeg_green[1] - 200).abs().max() <= 3 and jpeg_green[0].max() <= 3
    assert torch.all(x[1] == 90)  # grayscale -> three equal channels
    assert torch.all(x[2, 0] == 255) and torch.all(x[2, 1:] == 0)  # solid colour survives
    assert torch.all(x[3, 2] == 255)  # RGBA -> RGB drops alpha
    assert torch.all(ds.x_test[0].permute(1, 2, 0) == torch.tensor([1, 2, 3], dtype=torch.uint8))
    assert ds.name == "imagefolder-flowers-6px"
    ds.validate()


def test_imagefolder_bilinear_resize(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "r"
    grad = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # horizontal ramp
    for split in ("train", "test"):
        (root / split / "c").mkdir(parents=True)
        Image.fromarray(np.stack([grad] * 3, axis=-1)).save(root / split / "c" / "g.png")
    ds = load_imagefolder(root, 8)
    expected = Image.fromarray(np.stack([grad] * 3, axis=-1)).resize(
        (8, 8), Image.Resampling.BILINEAR
    )
    assert torch.equal(ds.x_train[0], torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    row = ds.x_train[0, 0, 0].tolist()
    assert row == sorted(row) and row[0] < 40 and row[-1] > 210


def test_imagefolder_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root not found"):
        load_imagefolder(tmp_path / "nope", 8)
    with pytest.raises(ValueError, match="image_size"):
        load_imagefolder(folder, 0)

    (folder / "test" / "zinnia" / "t.jpeg").rename(folder / "t.jpeg")
    (folder / "test" / "zinnia").rmdir()
    (folder / "test" / "rose").mkdir()
    with pytest.raises(ValueError, match=r"extra in test: \['rose'\], missing from test: \['zinnia'\]"):
        load_imagefolder(folder, 8)
    (folder / "test" / "rose").rmdir()
    (folder / "test" / "zinnia").mkdir()
    with pytest.raises(ValueError, match=r"test/zinnia has no \.png"):
        load_imagefolder(folder, 8)  # empty class
    (folder / "t.jpeg").rename(folder / "test" / "zinnia" / "t.jpeg")
    load_imagefolder(folder, 8)  # restored: loads again

    bad = folder / "train" / "aster" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_imagefolder(folder, 8)
    bad.unlink()
    _png(bad, (4, 4), (1, 1, 1), fmt="GIF")  # right suffix, wrong format
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        load_imagefolder(folder, 8)
    bad.unlink()

    for child in sorted((folder / "test").rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    (folder / "test").rmdir()
    with pytest.raises(FileNotFoundError, match="no test/ folder"):
        load_imagefolder(folder, 8)
