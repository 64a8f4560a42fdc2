"""The source registry: every `data.source` name, what each yields before reading data,
how config validation asks it, and that only prepare_data ever loads a source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdlib.config import ConfigError, DataConfig, parse_config
from kdlib.data.sources.base import Source, source_class, source_names
from kdlib.data.sources.digits import load_digits
from kdlib.data.sources.synthetic import make_synthetic
from tests.helpers.data import same_dataset, study_with_data

ROOT = Path(__file__).resolve().parents[2]
MODULES = {
    "cifar10": "cifar",
    "cifar100": "cifar",
    "digits": "digits",
    "imagefolder": "imagefolder",
    "synthetic": "synthetic",
    "text": "text",
}


def test_sources() -> None:
    assert source_names() == ("cifar10", "cifar100", "digits", "imagefolder", "synthetic", "text")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_source_is_a_class_of_its_own_module(name: str) -> None:
    """prepare_data's key follows `source_class(name).__module__`: it must be the source's."""
    cls = source_class(name)
    assert issubclass(cls, Source) and cls.name == name
    assert cls.__module__ == f"kdlib.data.sources.{MODULES[name]}"


def test_unknown_source_lists_the_allowed_names() -> None:
    with pytest.raises(ValueError, match=r"unknown source 'cifar1000'; allowed: 'cifar10', 'cifar100', 'digits'"):
        source_class("cifar1000")
    with pytest.raises(ConfigError, match=r"data\.source: unknown source 'cifar1000'; allowed: .*'synthetic'"):
        parse_config(study_with_data(source="cifar1000"))


def test_input_shape_is_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for split in ("train", "test"):  # imagefolder's classes: the class folders of train/ (listed, not read)
        for cls in ("cat", "dog", "emu"):
            (tmp_path / "set" / split / cls).mkdir(parents=True)
    url = "https://example.org/archive.tar.gz"
    assert DataConfig(source="synthetic", image_size=12).input_shape() == (3, 12, 100)
    assert DataConfig(source="digits").input_shape() == (1, 8, 10)
    assert DataConfig(source="cifar100", url=url).input_shape() == (3, 32, 100)
    assert DataConfig(source="cifar10", url=url).input_shape() == (3, 32, 10)
    assert DataConfig(source="imagefolder", path="set", image_size=16).input_shape() == (3, 16, 3)
    sized = {n for n in source_names() if source_class(n).takes_image_size}
    assert sized == {"synthetic", "imagefolder"}


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
        parse_config(study_with_data(**data))


def test_build_runs_the_sources_loader() -> None:
    data = DataConfig(source="synthetic", seed=2, train_per_class=2, test_per_class=1, image_size=8, difficulty=0.5)
    expected = make_synthetic(2, 2, 1, 8, difficulty=0.5)
    assert same_dataset(source_class("synthetic").build(data), expected)
    assert same_dataset(source_class("digits").build(DataConfig(source="digits", seed=1, test_fraction=0.3)),
                        load_digits(1, 0.3))


def test_only_prepare_data_loads_a_source() -> None:
    """Importing any other step (and the config) leaves every source module unloaded."""
    code = (
        "import sys, kdlib.config, tasks.train_teacher, tasks.cache_logits, tasks.train_student, tasks.evaluate; "
        "print([m for m in sys.modules if m.startswith('kdlib.data.sources')])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
