"""What a data source is, and the registry of sources by ``data.source`` name.

A source is a ``Source`` subclass with a ``name``, defined in its own module of this
package. The registry fills itself on first use by importing every module of the
package, so adding a source is adding a module: nothing else lists the names. Code
outside the package imports only this module; the step that runs a source depends on
this module plus the source's own (``source_class(name).__module__``), never on the
code of the other sources.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Sequence
from typing import ClassVar, Protocol

from kdlib.data.dataset import Dataset
from kdlib.data.tokens import TokenDataset


class DataSettings(Protocol):
    """The validated ``data`` section of a study, as a source reads it
    (``kdlib.config.DataConfig``)."""

    @property
    def seed(self) -> int: ...
    @property
    def train_per_class(self) -> int | None: ...
    @property
    def test_per_class(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def difficulty(self) -> float: ...
    @property
    def test_fraction(self) -> float: ...
    @property
    def path(self) -> str | None: ...
    @property
    def url(self) -> str | None: ...
    @property
    def root(self) -> str: ...
    @property
    def md5_check(self) -> bool: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def context(self) -> int: ...
    @property
    def corpus(self) -> Sequence[str]: ...
    @property
    def max_chars(self) -> int | None: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def tokenizer(self) -> str | None: ...


class DataSourceError(ValueError):
    """Input a source cannot read: a corrupt, truncated or misshapen file or folder.

    The message names the file or folder (and the member or image inside it) and what is
    wrong with it; ``Source.build`` prefixes the ``data.`` field that named the input, so
    ``prepare_data`` prints it as it is and exits 2 (no traceback)."""


class MissingDataError(DataSourceError, FileNotFoundError):
    """A file or folder a source needs is not there (also a ``FileNotFoundError``)."""


class Source:
    """One way to obtain a data set, selected by ``data.source == name``.

    Subclasses set ``name`` (an intermediate class without one is not registered) and
    implement ``input_shape`` and ``build``; ``check`` refuses settings this source
    cannot use. All take the validated ``data`` section.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "images"
    """What ``build`` returns: "images" (a ``Dataset``) or "tokens" (a ``TokenDataset``); the
    archs, methods and caches a study may use follow from it."""
    takes_image_size: ClassVar[bool] = False
    """Whether ``data.image_size`` sets the size of this source's images."""

    @classmethod
    def check(cls, data: DataSettings) -> None:
        """Raise ``ValueError`` naming the ``data.`` field if this source cannot run
        with ``data`` (checked when the config is validated, after ``data.path`` is known
        to exist inside the project: no data is read, a folder may be listed)."""

    @classmethod
    def input_shape(cls, data: DataSettings) -> tuple[int, int, int]:
        """(channels, image size, classes) of the images this source yields, known
        before any data is read: what config validation probes each arch with and checks
        the class count of the study's methods and ``logits.topk`` against. (A token
        source puts its context length in the image-size slot.)"""
        raise NotImplementedError

    @classmethod
    def content_digest(cls, data: DataSettings) -> str | None:
        """sha256 of the content this source would read that the ``data`` settings do not
        already pin (a corpus that ships with Python changes with Python), for
        ``prepare_data``'s key; None where the settings and ``data.path`` say it all."""
        return None

    @classmethod
    def build(cls, data: DataSettings) -> Dataset | TokenDataset:
        """Read or generate the data set (``prepare_data`` runs this, once per key).

        Bad input (a file or folder that cannot be read as this source reads it) raises
        ``DataSourceError`` naming the ``data.`` field, the file and what is wrong."""
        raise NotImplementedError


_lock = threading.Lock()
_registry: dict[str, type[Source]] | None = None


def _sources() -> dict[str, type[Source]]:
    """The registry, filled on first use: every module of this package is imported and
    each ``Source`` subclass with a ``name`` defined there is registered."""
    global _registry
    with _lock:
        if _registry is None:
            package = importlib.import_module(__name__.rpartition(".")[0])
            found: dict[str, type[Source]] = {}
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                module = importlib.import_module(f"{package.__name__}.{info.name}")
                for obj in vars(module).values():
                    if not (isinstance(obj, type) and issubclass(obj, Source) and obj.name):
                        continue
                    if obj.__module__ != module.__name__:
                        continue  # imported from elsewhere: registered by its own module
                    if obj.name in found:
                        raise RuntimeError(
                            f"data source {obj.name!r} is defined twice: in "
                            f"{found[obj.name].__module__} and {module.__name__}"
                        )
                    found[obj.name] = obj
            _registry = found
        return _registry


def source_names() -> tuple[str, ...]:
    """Every registered source name, sorted."""
    return tuple(sorted(_sources()))


def source_class(name: str) -> type[Source]:
    """The source registered as ``name``; ``ValueError`` listing the allowed names if none."""
    sources = _sources()
    if name not in sources:
        allowed = ", ".join(repr(n) for n in sorted(sources))
        raise ValueError(f"unknown source {name!r}; allowed: {allowed}")
    return sources[name]
