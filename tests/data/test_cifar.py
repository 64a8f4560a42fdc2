"""The CIFAR sources: official archives read by a restricted unpickler, and their MD5s."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.config import DataConfig
from kdlib.data.sources import cifar
from kdlib.data.sources.base import DataSourceError, MissingDataError, source_class
from kdlib.data.sources.cifar import (
    CIFAR10_MD5,
    CIFAR100_MD5,
    CIFAR_MD5,
    ChecksumError,
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
    with pytest.raises(ValueError, match="member cifar-100-python/train: not a readable pickle"):
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
    with pytest.raises(ValueError, match=r"not a CIFAR-100 python archive \(member cifar-100-python/meta missing\)") as info:
        load_cifar(archive, "cifar100")
    assert str(archive) in str(info.value)
    with pytest.raises(ValueError, match=r"not a CIFAR-10 python archive \(member cifar-10-batches-py/.* missing; it holds "
                       r"cifar-100-python/, the CIFAR-100 python archive: data.source cifar100\?\)"):
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


# --------------------------------------------------------------------------- #
# One test per kind of bad archive, written in the real format: each is a
# DataSourceError (a ValueError) whose message starts with the archive's path.
# --------------------------------------------------------------------------- #
def archive_error(archive: Path, variant: str = "cifar100") -> str:
    with pytest.raises(DataSourceError) as info:
        load_cifar(archive, variant)  # type: ignore[arg-type]
    msg = str(info.value)
    assert msg.startswith(f"{archive}: "), msg
    return msg.removeprefix(f"{archive}: ")


def plain_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, payload in members.items():
            add_bytes(tf, name, payload)
    return buf.getvalue()


def test_truncated_archive(tmp_path: Path) -> None:
    whole = write_tar(tmp_path / "whole.tar.gz", cifar100_members()).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    assert archive_error(cut) == (
        "truncated archive (EOFError: Compressed file ended before the end-of-stream marker was reached)"
    )
    raw = plain_tar(cifar100_members())  # an uncompressed tar cut inside a member
    cut.write_bytes(raw[:9000])
    assert archive_error(cut) == "truncated archive (ReadError: unexpected end of data)"


@pytest.mark.parametrize(
    "content, what",
    [(b"", "an empty file"), (b"<html>404 Not Found</html>", "not a tar or tar.gz file"),
     (b"PK\x03\x04" + bytes(100), "not a tar or tar.gz file")],
    ids=["empty", "html", "zip"],
)
def test_not_an_archive(tmp_path: Path, content: bytes, what: str) -> None:
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(content)
    assert archive_error(archive) == f"not a CIFAR-100 python archive ({what})"


def test_wrong_members(tmp_path: Path) -> None:
    renamed = {k.replace("cifar-100-python/", "cifar100/"): v for k, v in cifar100_members().items()}
    archive = write_tar(tmp_path / "renamed.tar.gz", renamed)
    assert archive_error(archive) == "not a CIFAR-100 python archive (member cifar-100-python/train missing)"
    archive = write_tar(tmp_path / "c10.tar.gz", cifar10_members())
    assert archive_error(archive) == (
        "not a CIFAR-100 python archive (member cifar-100-python/train missing; it holds cifar-10-batches-py/, "
        "the CIFAR-10 python archive: data.source cifar10?)"
    )


def test_a_folder_and_a_missing_archive(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python").mkdir()
    assert archive_error(tmp_path / "cifar-100-python") == (
        "a folder, not the CIFAR-100 python archive (give the .tar.gz itself, not extracted)"
    )
    with pytest.raises(MissingDataError, match="absent.tar.gz: CIFAR archive not found") as info:
        load_cifar(tmp_path / "absent.tar.gz", "cifar100")
    assert isinstance(info.value, FileNotFoundError)


def test_a_member_claiming_more_than_any_cifar_file_is_not_read(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cifar, "MAX_MEMBER_BYTES", 1000)
    archive = write_tar(tmp_path / "big.tar.gz", cifar100_members())
    with pytest.raises(UnsafeArchiveError, match=r"member cifar-100-python/train claims \d+ bytes, more than any CIFAR file"):
        load_cifar(archive, "cifar100")


@pytest.mark.parametrize(
    "train, what",
    [
        ({b"fine_labels": [2**70], b"coarse_labels": [0], b"data": images(1, 0)},
         r"b'fine_labels' is not a list of integers \(OverflowError"),
        ({b"fine_labels": [], b"coarse_labels": [], b"data": np.zeros((0, 3072), dtype=np.uint8)},
         "no images in cifar-100-python/train"),
        ({b"fine_labels": [0, 9], b"coarse_labels": [0, 0], b"data": images(2, 0)},
         r"b'fine_labels' has labels outside \[0, 4\)"),
        ([1, 2, 3], "expected a dict, got list"),
    ],
    ids=["label-overflow", "no-images", "label-range", "not-a-dict"],
)
def test_members_of_the_wrong_content(tmp_path: Path, train, what: str) -> None:
    archive = write_tar(tmp_path / "c.tar.gz", cifar100_members(train_override=py2_pickle(train)))
    assert re.search(what, archive_error(archive))


def test_every_truncation_and_bit_flip_of_an_archive_is_a_named_error(tmp_path: Path) -> None:
    """gzip, zlib, tarfile and pickle raise many types on a damaged archive; each comes back as
    a DataSourceError naming it (a flip inside pixel data can leave a readable archive: the
    MD5 check of `Source.build` is what refuses that one)."""
    good = write_tar(tmp_path / "good.tar.gz", cifar100_members()).read_bytes()
    rng = random.Random(0)
    damaged = [good[:n] for n in range(0, len(good), len(good) // 60)]
    for _ in range(60):
        flipped = bytearray(good)
        for _ in range(3):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        damaged.append(bytes(flipped))
    archive = tmp_path / "damaged.tar.gz"
    for content in damaged:
        archive.write_bytes(content)
        try:
            load_cifar(archive, "cifar100")
        except DataSourceError as err:
            assert str(err).startswith(f"{archive}: "), err


# --------------------------------------------------------------------------- #
# The source: data.path's MD5 is checked before the archive is read (data.md5_check)
# --------------------------------------------------------------------------- #
def test_data_path_is_checked_against_the_official_md5_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_tar(tmp_path / "cifar-100-python.tar.gz", cifar100_members())
    actual = md5_file(tmp_path / "cifar-100-python.tar.gz")
    data = DataConfig(source="cifar100", path="cifar-100-python.tar.gz")
    assert data.md5_check and "md5_check" not in data.model_dump()  # not part of prepare_data's key
    with pytest.raises(ChecksumError) as info:
        source_class("cifar100").build(data)
    assert str(info.value) == (
        f"data.path cifar-100-python.tar.gz: MD5 mismatch: expected {CIFAR100_MD5}, got {actual} (not the official "
        "cifar-100-python.tar.gz); to read a modified archive, set data.md5_check: false"
    )
    accepted = DataConfig(source="cifar100", path="cifar-100-python.tar.gz", md5_check=False)
    assert source_class("cifar100").build(accepted).num_classes == 4

    half = (tmp_path / "cifar-100-python.tar.gz").read_bytes()
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(half[: len(half) // 2])
    with pytest.raises(ChecksumError):  # checked before reading: the MD5, not the truncation, is reported
        source_class("cifar100").build(data)
    with pytest.raises(DataSourceError, match=r"^data\.path cifar-100-python\.tar\.gz: truncated archive \(EOFError"):
        source_class("cifar100").build(accepted)


def test_a_download_is_named_by_its_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = (tmp_path / "nowhere.tar.gz").as_uri()
    with pytest.raises(DataSourceError, match=rf"^data\.url {re.escape(missing)}: download failed \(URLError"):
        source_class("cifar10").build(DataConfig(source="cifar10", url=missing))
    assert not (tmp_path / "data" / ".cifar-10-python.tar.gz.download").exists()

    served = write_tar(tmp_path / "served.tar.gz", cifar10_members())
    data = DataConfig(source="cifar10", url=served.as_uri())
    with pytest.raises(ChecksumError, match=rf"^data\.url {re.escape(served.as_uri())}: MD5 mismatch: expected "
                                            rf"{CIFAR10_MD5} \(the official cifar-10-python.tar.gz\), got .*; nothing was kept"):
        source_class("cifar10").build(data)
    assert not any((tmp_path / "data").iterdir())
    ds = source_class("cifar10").build(DataConfig(source="cifar10", url=served.as_uri(), md5_check=False))
    assert ds.num_classes == 10 and (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()

    served.write_bytes(b"not a tar")  # a bad archive already downloaded: named by the url and the file
    (tmp_path / "data" / "cifar-10-python.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DataSourceError, match=rf"^data\.url {re.escape(served.as_uri())}: data/cifar-10-python\.tar\.gz: "
                                              r"not a CIFAR-10 python archive \(not a tar or tar\.gz file\)"):
        source_class("cifar10").build(DataConfig(source="cifar10", url=served.as_uri(), md5_check=False))


def test_data_path_that_is_a_folder_or_a_pipe_is_refused_at_validation(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(ValueError, match=r"data\.path cifar-100-python: a folder; source 'cifar100' reads the official "
                                         r"archive itself \(cifar-100-python\.tar\.gz, not extracted\)"):
        DataConfig(source="cifar100", path="cifar-100-python")
    os.mkfifo(tmp_path / "c.tar.gz")  # reading it for its MD5 would block forever
    with pytest.raises(ValueError, match=r"data\.path c\.tar\.gz: not a regular file"):
        DataConfig(source="cifar100", path="c.tar.gz")
