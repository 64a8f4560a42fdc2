"""``text``: next-token windows of real text that ships with Python, or of a folder of ``.txt`` files.

The built-in corpus (``data.corpus``) needs no download: ``pydoc`` is the standard
library's documentation topics (``pydoc_data.topics``, one document per topic, ~465K
characters of English), ``stdlib`` the standard library's own ``.py`` files (one document
per file, a second domain). ``data.path`` names a folder of UTF-8 ``.txt`` files instead.
Documents are shuffled with ``data.seed`` and split into train/validation/test *before*
tokenising, so no document leaks across splits; a byte-level BPE (Hugging Face
``tokenizers``) is trained on the train split alone, or ``data.tokenizer`` is used. Each
split is packed into windows by ``kdlib.data.tokens``.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from kdlib.data.sources.base import DataSettings, DataSourceError, MissingDataError, Source
from kdlib.data.tokens import SPLITS, TokenDataset, pack_windows

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOT = "<|endoftext|>"
"""The end-of-text token that joins documents (GPT-2's spelling); a ``data.tokenizer``
file must have it."""

DEFAULT_CORPUS = ("pydoc",)
STDLIB_SKIPPED = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"})
"""Folders of the standard library left out of ``stdlib``: installed packages are not the
standard library, test suites hold deliberately odd files, ``pydoc_data`` is ``pydoc``."""
STDLIB_MAX_FILE_BYTES = 256 * 1024
"""Larger ``.py`` files (generated tables, ``_pydecimal``) are left out of ``stdlib``."""

Document = tuple[str, str]
"""(name, text): the name says where the text came from (``pydoc:if``, ``stdlib:json/decoder.py``)."""


# -----------------------------------------------------------------------------
# The documents


def pydoc_documents() -> Iterator[Document]:
    """The documentation topics of this Python, sorted by topic name."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield f"pydoc:{key}", topics[key]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents(root: Path | None = None) -> Iterator[Document]:
    """The standard library's ``.py`` files (sorted by relative path; ``STDLIB_SKIPPED``
    folders, files over ``STDLIB_MAX_FILE_BYTES`` and files that are not UTF-8 left out)."""
    root = stdlib_root() if root is None else root
    files: list[tuple[str, Path]] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in STDLIB_SKIPPED]  # not even listed
        for name in names:
            if name.endswith(".py"):
                path = Path(folder) / name
                files.append((path.relative_to(root).as_posix(), path))
    for rel, path in sorted(files):
        try:
            if not path.is_file() or path.stat().st_size > STDLIB_MAX_FILE_BYTES:
                continue
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield f"stdlib:{rel}", text


def _txt_files(root: Path) -> list[Path]:
    """The non-hidden ``.txt`` files below ``root``, sorted by relative path (listing only).

    ``MissingDataError`` for a missing folder, ``DataSourceError`` for a file or a folder
    without ``.txt`` files; messages start with ``root``."""
    if not root.is_dir():
        if root.exists():
            raise DataSourceError(f"{root}: not a folder (source 'text' reads a folder of .txt files)")
        raise MissingDataError(f"{root}: text folder not found")
    files = sorted(
        (p for p in root.rglob("*")
         if p.suffix.lower() == ".txt" and p.is_file()
         and not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise DataSourceError(f"{root}: holds no .txt files (source 'text' reads one document per .txt file)")
    return files


def folder_documents(root: Path) -> Iterator[Document]:
    """Each ``.txt`` file below ``root`` as one document (UTF-8; a byte-order mark is
    dropped). ``DataSourceError`` naming the file that is not UTF-8."""
    for path in _txt_files(root):
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataSourceError(f"{root}: {rel} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
        except OSError as exc:
            raise DataSourceError(f"{root}: cannot read {rel} ({exc.strerror or exc})") from exc
        yield f"{root.name}:{rel}", text


def capped(documents: Iterable[Document], max_chars: int | None) -> list[Document]:
    """The documents in order until ``max_chars`` characters are read (the last one cut
    there); all of them when ``max_chars`` is None. Only what is kept is read."""
    kept: list[Document] = []
    left = math.inf if max_chars is None else max_chars
    for name, text in documents:
        if left <= 0:
            break
        text = text if len(text) <= left else text[: int(left)]
        kept.append((name, text))
        left -= len(text)
    return kept


def domains(data: DataSettings) -> list[tuple[str, list[Document]]]:
    """Each corpus domain with its documents, ``data.max_chars`` applied per domain: the
    ``data.path`` folder, else the ``data.corpus`` domains in the order given."""
    if data.path is not None:
        root = Path(data.path)
        try:
            return [(f"folder {root.name}", capped(folder_documents(root), data.max_chars))]
        except DataSourceError as err:
            raise type(err)(f"data.path {err}") from err
    readers = {"pydoc": pydoc_documents, "stdlib": stdlib_documents}
    return [(name, capped(readers[name](), data.max_chars)) for name in data.corpus]


def split_documents(
    documents: list[Document], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[Document]]:
    """A seeded shuffle of whole documents cut by size: test takes documents until it holds
    ``test_fraction`` of the characters, validation the next ``val_fraction``, train the
    rest (each at least one document). A document's tokens are all in one split; splits
    sized by characters, not document counts, keep a few long documents from making the
    held-out splits larger than asked. ``ValueError`` when a split would be empty."""
    order = np.random.default_rng([seed % 2**32, 13]).permutation(len(documents))
    shuffled = [documents[i] for i in order]
    total = sum(len(text) for _, text in shuffled)
    splits: dict[str, list[Document]] = {}
    i = 0
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        first, chars = i, 0
        while i < len(shuffled) and (i == first or chars < fraction * total):
            chars += len(shuffled[i][1])
            i += 1
        splits[split] = shuffled[first:i]
    splits["train"] = shuffled[i:]
    if not all(splits.values()):
        raise ValueError(
            f"{len(documents)} documents ({total} characters) cannot be split into train, validation "
            f"({val_fraction}) and test ({test_fraction}) documents; give more documents or lower "
            "data.val_fraction / data.test_fraction"
        )
    return splits


# -----------------------------------------------------------------------------
# The tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens trained on ``texts``: ``EOT``
    (id 0), the 256 bytes (so every text encodes, nothing is unknown), then merges. The
    trainer counts exactly and breaks ties by pair, so the same texts give the same
    tokenizer whatever the thread count."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of a ``tokenizer.json``; ``DataSourceError`` naming ``path`` if it is
    not one or has no ``EOT`` token."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise DataSourceError(f"{path}: not a Hugging Face tokenizer.json ({exc})") from exc
    if tokenizer.token_to_id(EOT) is None:
        raise DataSourceError(f"{path}: the tokenizer has no {EOT} token to join documents with")
    return tokenizer


def tokenizer_vocab(tokenizer: Tokenizer) -> int:
    """The class count of a tokenizer's ids: its largest id + 1."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """The documents' ids, each followed by ``EOT``, as one int64 stream. An ``EOT`` spelled
    inside a document is encoded as the text it is, never as the separator."""
    eot = tokenizer.token_to_id(EOT)
    tokenizer.encode_special_tokens = True
    try:
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    finally:
        tokenizer.encode_special_tokens = False
    ids: list[int] = []
    for enc in encodings:
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.int64)


# -----------------------------------------------------------------------------
# The data set


def corpus_digest(data: DataSettings) -> str:
    """sha256 of every document ``build_text`` reads (its name and UTF-8 text, in order)
    and of the ``data.tokenizer`` file's bytes."""
    digest = hashlib.sha256()

    def add(part: bytes) -> None:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)

    for domain, documents in domains(data):
        add(domain.encode())
        for name, text in documents:
            add(name.encode())
            add(text.encode("utf-8"))
    if data.tokenizer is not None:
        add(Path(data.tokenizer).read_bytes())
    return digest.hexdigest()


def build_text(data: DataSettings) -> TokenDataset:
    """Read the corpus, split it by document, tokenise and pack each split (see the module)."""
    documents = [doc for _, docs in domains(data) for doc in docs]
    where = f"data.path {data.path}" if data.path is not None else f"data.corpus {list(data.corpus)}"
    try:
        splits = split_documents(documents, data.seed, data.val_fraction, data.test_fraction)
    except ValueError as err:
        raise DataSourceError(f"{where}: {err}") from err
    if data.tokenizer is not None:
        try:
            tokenizer = load_tokenizer(Path(data.tokenizer))
        except DataSourceError as err:
            raise type(err)(f"data.tokenizer {err}") from err
        num_classes = tokenizer_vocab(tokenizer)
    else:
        tokenizer = train_tokenizer([text for _, text in splits["train"]], data.vocab_size)
        num_classes = data.vocab_size
    windows: dict[str, torch.Tensor] = {}
    for split in SPLITS:
        ids = encode_documents(tokenizer, [text for _, text in splits[split]])
        windows[split] = pack_windows(ids, data.context)
        if windows[split].shape[0] == 0:
            raise DataSourceError(
                f"data.context: the {split} split of {where} has {ids.numel()} tokens, fewer than one window of "
                f"{data.context + 1}; lower data.context or give more text"
            )
    source = Path(data.path).name if data.path is not None else "+".join(data.corpus)
    name = f"text-{source}-s{data.seed}-v{num_classes}-t{data.context}"
    ds = TokenDataset.from_windows(windows, num_classes, name, tokenizer.to_str())
    ds.validate()
    return ds


class Text(Source):
    """``build_text(data)``: (N, ``data.context``) next-token windows of the built-in corpus or
    of ``data.path``'s ``.txt`` files."""

    name = "text"
    kind = "tokens"

    @classmethod
    def check(cls, data: DataSettings) -> None:
        if data.val_fraction + data.test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction: {data.val_fraction} with data.test_fraction {data.test_fraction} leaves no "
                "training documents; their sum must be < 1"
            )
        if len(set(data.corpus)) != len(data.corpus):
            raise ValueError(f"data.corpus: {list(data.corpus)} names a domain twice")
        if data.path is not None:
            if tuple(data.corpus) != DEFAULT_CORPUS:
                raise ValueError(
                    f"data.corpus: {list(data.corpus)} and data.path are two corpora; data.path's .txt files are "
                    "read instead of data.corpus, so remove one"
                )
            try:
                _txt_files(Path(data.path))  # the folder listing alone
            except DataSourceError as err:
                raise type(err)(f"data.path {err}") from err
        if data.tokenizer is not None:
            try:
                load_tokenizer(Path(data.tokenizer))
            except DataSourceError as err:
                raise type(err)(f"data.tokenizer {err}") from err

    @classmethod
    def input_shape(cls, data: DataSettings) -> tuple[int, int, int]:
        """(1, context, vocabulary): for tokens the image-size slot holds the context length
        (T positions per window) and the classes are the vocabulary (``data.vocab_size``,
        or the size of ``data.tokenizer``'s vocabulary)."""
        vocab = data.vocab_size if data.tokenizer is None else tokenizer_vocab(load_tokenizer(Path(data.tokenizer)))
        return 1, data.context, vocab

    @classmethod
    def content_digest(cls, data: DataSettings) -> str | None:
        """``corpus_digest``: the built-in corpus is this Python's, so another Python's
        documentation gives another key."""
        return corpus_digest(data)

    @classmethod
    def build(cls, data: DataSettings) -> TokenDataset:
        return build_text(data)
