"""prepare_data on real-format sources: local CIFAR archives, downloads with MD5, image folders."""
import copy

import pytest

from kdlib.config import ConfigError, parse_config
from kdlib.data import md5_file
from tasks import prepare_data
from tests.conftest import TINY_STUDY
from tests.test_data_sources import cifar100_members, write_tar


def study(**data):
    raw = copy.deepcopy(TINY_STUDY)
    raw["data"] = data
    return raw


def test_local_cifar100_archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tar(tmp_path / "cifar-100-python.tar.gz", cifar100_members())
    cfg = parse_config(study(source="cifar100", path="cifar-100-python.tar.gz"))
    manifest = prepare_data.run(cfg, tmp_path / "out")
    assert manifest["meta"]["num_classes"] == 4 and manifest["meta"]["shape"] == [3, 32, 32]
    assert manifest["meta"]["num_train"] == 6 and manifest["meta"]["num_test"] == 3


def test_download_checks_the_official_md5_and_keeps_nothing_on_mismatch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_tar(tmp_path / "served.tar.gz", cifar100_members())
    cfg = parse_config(study(source="cifar100", url=source.as_uri(), root="data"))
    with pytest.raises(ValueError, match="MD5 mismatch"):
        prepare_data.run(cfg, tmp_path / "out")
    assert not any((tmp_path / "data").iterdir())

    monkeypatch.setitem(prepare_data.CIFAR_MD5, "cifar-100-python.tar.gz", md5_file(source))
    manifest = prepare_data.run(cfg, tmp_path / "out")
    assert (tmp_path / "data/cifar-100-python.tar.gz").is_file() and manifest["meta"]["num_classes"] == 4


@pytest.mark.parametrize(
    "data, message",
    [
        ({"source": "cifar100"}, "data.path or data.url is needed"),
        ({"source": "imagefolder"}, "data.path is needed"),
        ({"source": "cifar10", "path": "missing.tar.gz"}, "does not exist"),
        ({"source": "cifar10", "path": "/etc/passwd"}, "outside the project"),
        ({"source": "cifar10", "url": "ftp://example.org/x.tar.gz"}, "data.url must be"),
    ],
)
def test_bad_data_paths_are_named(tmp_path, monkeypatch, data, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        parse_config(study(**data))
