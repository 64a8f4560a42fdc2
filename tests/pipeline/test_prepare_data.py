"""prepare_data on real-format sources: local CIFAR archives, downloads with MD5, image
folders, and the content digests that key a data set read from a path."""

import hashlib
import json
import os

import pytest

from kdlib import artifacts
from kdlib.config import parse_config
from kdlib.data.sources import cifar
from tasks import prepare_data
from tests.helpers.data import cifar100_members, images, py2_pickle, study_with_data, write_image, write_tar


def test_local_cifar100_archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tar(tmp_path / "cifar-100-python.tar.gz", cifar100_members())
    cfg = parse_config(study_with_data(source="cifar100", path="cifar-100-python.tar.gz", md5_check=False))
    manifest = prepare_data.run(cfg, tmp_path / "out")
    assert manifest["meta"]["num_classes"] == 4 and manifest["meta"]["shape"] == [3, 32, 32]
    assert manifest["meta"]["num_train"] == 6 and manifest["meta"]["num_test"] == 3


def test_download_checks_the_official_md5_and_keeps_nothing_on_mismatch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_tar(tmp_path / "served.tar.gz", cifar100_members())
    cfg = parse_config(study_with_data(source="cifar100", url=source.as_uri(), root="data"))
    with pytest.raises(ValueError, match="MD5 mismatch"):
        prepare_data.run(cfg, tmp_path / "out")
    assert not any((tmp_path / "data").iterdir())

    monkeypatch.setitem(cifar.CIFAR_MD5, "cifar-100-python.tar.gz", cifar.md5_file(source))
    manifest = prepare_data.run(cfg, tmp_path / "out")
    assert (tmp_path / "data/cifar-100-python.tar.gz").is_file() and manifest["meta"]["num_classes"] == 4


def test_content_digest_of_a_file_and_a_folder(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"archive bytes")
    memo = tmp_path / "memo.json"
    assert artifacts.content_digest(archive, memo) == hashlib.sha256(b"archive bytes").hexdigest()

    root = tmp_path / "set"
    (root / "train/cat").mkdir(parents=True)
    (root / "train/cat/1.png").write_bytes(b"one")
    (root / "test").mkdir()
    (root / "test/2.png").write_bytes(b"two!")
    (root / ".DS_Store").write_bytes(b"ignored")
    listing = [
        ["test/2.png", 4, hashlib.sha256(b"two!").hexdigest()],
        ["train/cat/1.png", 3, hashlib.sha256(b"one").hexdigest()],
    ]
    expected = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    assert artifacts.content_digest(root, memo) == expected


def test_content_digest_reads_a_file_again_only_when_its_size_or_mtime_moves(tmp_path, monkeypatch):
    archive, memo = tmp_path / "a.bin", tmp_path / "memo.json"
    archive.write_bytes(b"x" * 100)
    reads = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p: reads.append(p) or real(p))
    first = artifacts.content_digest(archive, memo)
    assert artifacts.content_digest(archive, memo) == first and len(reads) == 1

    archive.write_bytes(b"y" * 100)  # same size, same path, new content
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    assert artifacts.content_digest(archive, memo) != first and len(reads) == 2

    memo.write_text("{not json")  # a garbled memo is rebuilt, not trusted
    assert artifacts.content_digest(archive, memo) == hashlib.sha256(b"y" * 100).hexdigest()


def test_replacing_the_archive_at_the_same_path_changes_the_key_and_rebuilds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    archive = write_tar(tmp_path / "cifar-100-python.tar.gz", cifar100_members())
    cfg = parse_config(study_with_data(source="cifar100", path="cifar-100-python.tar.gz", md5_check=False))
    first = prepare_data.cached(cfg)
    assert prepare_data.key(cfg) == first["key"]

    fine = [0, 1, 2, 3]
    train = {b"filenames": [b"n%d.png" % i for i in fine], b"batch_label": b"training batch 1 of 1",
             b"fine_labels": fine, b"coarse_labels": [k // 2 for k in fine], b"data": images(4, 7)}
    write_tar(archive, cifar100_members(train_override=py2_pickle(train)))  # 4 train images, not 6
    second = prepare_data.cached(cfg)
    assert second["key"] != first["key"] and second["dir"] != first["dir"]
    assert (first["meta"]["num_train"], second["meta"]["num_train"]) == (6, 4)


def test_imagefolder_key_follows_the_images_not_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for split in ("train", "test"):
        for k, name in enumerate(("cat", "dog", "emu")):  # 3 classes: the tiny study's logits.topk is 3
            write_image(tmp_path / "set" / split / name / "a.png", (8, 8), (k * 90, 0, 0))
    cfg = parse_config(study_with_data(source="imagefolder", path="set", image_size=8))
    before = prepare_data.key(cfg)
    assert prepare_data.key(cfg) == before
    write_image(tmp_path / "set/train/dog/a.png", (8, 8), (0, 0, 255))
    assert prepare_data.key(cfg) != before
