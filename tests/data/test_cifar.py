"""The CIFAR sources: official archives read by a restricted unpickler, and their MD5s."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.data.sources.cifar import (
    CIFAR10_MD5,
    CIFAR100_MD5,
    CIFAR_MD5,
    RestrictedUnpickler,
    UnsafeArchiveError,
    load_cifar,
    md5_file,
    safe_unpickle,
    verify_md5,
)
from tests.helpers.data import add_bytes, add_link, cifar10_members, cifar100_members, images, py2_pickle, write_tar


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
