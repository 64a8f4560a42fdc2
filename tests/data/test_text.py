"""The `text` source and the token data set: document splits, the BPE tokenizer, packed
windows, the dataset file, the settings it refuses and the content digest in prepare_data's key."""

from __future__ import annotations

from pathlib import Path

import pydoc_data.topics
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from kdlib.config import ConfigError, DataConfig, parse_config
from kdlib.data.dataset import Dataset, load_dataset, save_dataset
from kdlib.data.sources.base import DataSourceError, source_class
from kdlib.data.sources.text import (
    EOT,
    Text,
    capped,
    domains,
    encode_documents,
    folder_documents,
    split_documents,
    stdlib_documents,
    tokenizer_vocab,
    train_tokenizer,
)
from kdlib.data.tokens import SPLITS, TokenDataset, storage_dtype
from tasks import prepare_data
from tests.helpers.data import study_with_data

VOCAB = 512
CONTEXT = 16
DOCS = 24


def marker(i: int) -> str:
    return f"Document{i:02d}marker"


def write_corpus(folder: Path, n: int = DOCS, chars: int = 1500) -> Path:
    """`n` .txt files of real English (pydoc topics), each opening with its own marker word."""
    folder.mkdir(parents=True, exist_ok=True)
    topics = pydoc_data.topics.topics
    for i, key in enumerate(sorted(topics)[:n]):
        (folder / f"doc_{i:02d}.txt").write_text(f"{marker(i)} {topics[key][:chars]}", encoding="utf-8")
    return folder


def text_config(project: Path, **settings: object) -> DataConfig:
    """A validated `text` data section as a study in `project` gives it (paths made absolute)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        for field in ("path", "tokenizer"):
            if isinstance(settings.get(field), str):
                settings[field] = str(project / str(settings[field]))
        return DataConfig(**{"source": "text", "vocab_size": VOCAB, "context": CONTEXT, **settings})


def decoded(ds: TokenDataset, split: str) -> str:
    tokenizer = Tokenizer.from_str(ds.tokenizer_json)
    return tokenizer.decode(ds.windows(split).flatten().tolist(), skip_special_tokens=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    write_corpus(root / "texts")
    return root


@pytest.fixture(scope="module")
def built(project: Path) -> TokenDataset:
    return source_class("text").build(text_config(project, path="texts"))


# --------------------------------------------------------------------------- #
# the source and its documents
# --------------------------------------------------------------------------- #
def test_text_is_a_registered_source_of_its_own_module() -> None:
    assert source_class("text") is Text and Text.__module__ == "kdlib.data.sources.text"


def test_input_shape_is_one_channel_context_by_vocabulary() -> None:
    assert DataConfig(source="text").input_shape() == (1, 64, 4096)
    assert DataConfig(source="text", context=32, vocab_size=1000).input_shape() == (1, 32, 1000)


def test_documents_are_split_whole_into_disjoint_splits() -> None:
    documents = [(f"d{i}", "x" * (100 + 37 * i)) for i in range(40)]
    splits = split_documents(documents, seed=3, val_fraction=0.1, test_fraction=0.2)
    names = [[name for name, _ in splits[s]] for s in SPLITS]
    assert sorted(sum(names, [])) == sorted(name for name, _ in documents)  # every document once
    total = sum(len(t) for _, t in documents)
    chars = {s: sum(len(t) for _, t in splits[s]) for s in SPLITS}
    assert chars["test"] >= 0.2 * total and chars["test"] - len(splits["test"][-1][1]) < 0.2 * total
    assert chars["val"] >= 0.1 * total and chars["val"] - len(splits["val"][-1][1]) < 0.1 * total
    other = split_documents(documents, seed=4, val_fraction=0.1, test_fraction=0.2)
    assert [n for n, _ in other["test"]] != [n for n, _ in splits["test"]]  # the seed shuffles


def test_each_document_lands_in_exactly_one_split_of_the_windows(built: TokenDataset) -> None:
    texts = {split: decoded(built, split) for split in SPLITS}
    for i in range(DOCS):
        assert sum(marker(i) in texts[split] for split in SPLITS) == 1, marker(i)


def test_too_few_documents_to_split_are_refused(tmp_path: Path) -> None:
    write_corpus(tmp_path / "two", n=2)
    with pytest.raises(DataSourceError, match=r"data\.path .*2 documents .* cannot be split"):
        Text.build(text_config(tmp_path, path="two"))


def test_a_split_shorter_than_one_window_names_data_context(tmp_path: Path) -> None:
    write_corpus(tmp_path / "short", n=6, chars=40)
    with pytest.raises(DataSourceError, match=r"data\.context: the train split .* fewer than one window of 2001"):
        Text.build(text_config(tmp_path, path="short", context=2000))


def test_max_chars_keeps_a_prefix_of_the_sorted_documents() -> None:
    documents = [("a", "x" * 10), ("b", "y" * 10), ("c", "z" * 10)]
    assert capped(documents, 15) == [("a", "x" * 10), ("b", "y" * 5)]
    assert capped(documents, None) == documents
    (domain, pydoc), = domains(DataConfig(source="text", max_chars=5000))
    assert domain == "pydoc" and sum(len(t) for _, t in pydoc) == 5000
    assert [n for n, _ in pydoc] == sorted(n for n, _ in pydoc) and pydoc[0][0].startswith("pydoc:")


def test_the_stdlib_domain_is_this_pythons_source_files_without_tests_or_pydoc() -> None:
    names = [name for name, _ in capped(stdlib_documents(), 300_000)]
    assert names == sorted(names) and all(n.startswith("stdlib:") and n.endswith(".py") for n in names)
    assert not any("/test/" in n or n.startswith(("stdlib:test/", "stdlib:pydoc_data/")) for n in names)
    both = domains(DataConfig(source="text", corpus=["pydoc", "stdlib"], max_chars=1000))
    assert [d for d, _ in both] == ["pydoc", "stdlib"] and all(sum(len(t) for _, t in docs) == 1000 for _, docs in both)


def test_the_builtin_corpus_builds_with_nothing_downloaded() -> None:
    ds = Text.build(DataConfig(source="text", vocab_size=VOCAB, context=CONTEXT, max_chars=40_000))
    assert ds.name == f"text-pydoc-s0-v{VOCAB}-t{CONTEXT}" and ds.context == CONTEXT
    assert all(getattr(ds, f"x_{s}").shape[0] > 0 for s in SPLITS)


# --------------------------------------------------------------------------- #
# the tokenizer and the windows
# --------------------------------------------------------------------------- #
def test_building_twice_gives_identical_tensors_and_tokenizer(project: Path, built: TokenDataset) -> None:
    again = Text.build(text_config(project, path="texts"))
    assert again.tokenizer_json == built.tokenizer_json
    for split in SPLITS:
        assert torch.equal(again.windows(split), built.windows(split))
    reseeded = Text.build(text_config(project, path="texts", seed=1))
    assert not torch.equal(reseeded.windows("test"), built.windows("test"))


def test_bpe_training_is_deterministic() -> None:
    texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)[:12]]
    assert train_tokenizer(texts, VOCAB).to_str() == train_tokenizer(texts, VOCAB).to_str()


def test_the_vocabulary_size_is_respected(built: TokenDataset) -> None:
    tokenizer = Tokenizer.from_str(built.tokenizer_json)
    assert built.num_classes == VOCAB and tokenizer.get_vocab_size() == VOCAB
    assert tokenizer.token_to_id(EOT) == 0
    for split in SPLITS:
        x, y = getattr(built, f"x_{split}"), getattr(built, f"y_{split}")
        assert x.dtype == y.dtype == torch.int64 and int(x.min()) >= 0 and int(y.max()) < VOCAB


def test_windows_are_contiguous_shifts_of_the_split_token_stream(project: Path, built: TokenDataset) -> None:
    data = text_config(project, path="texts")
    documents = list(folder_documents(project / "texts"))
    splits = split_documents(documents, data.seed, data.val_fraction, data.test_fraction)
    tokenizer = Tokenizer.from_str(built.tokenizer_json)
    for split in SPLITS:
        x, y = getattr(built, f"x_{split}"), getattr(built, f"y_{split}")
        assert x.shape[1] == CONTEXT and torch.equal(x[:, 1:], y[:, :-1])
        stream = encode_documents(tokenizer, [text for _, text in splits[split]])
        n = x.shape[0]
        assert n == stream.numel() // (CONTEXT + 1)  # only the last partial window is dropped
        assert torch.equal(built.windows(split).flatten(), stream[: n * (CONTEXT + 1)])
        assert int((stream == 0).sum()) == len(splits[split])  # one end-of-text per document


def test_end_of_text_spelled_inside_a_document_is_text(built: TokenDataset) -> None:
    ids = encode_documents(Tokenizer.from_str(built.tokenizer_json), [f"before {EOT} after"])
    assert ids.tolist().count(0) == 1 and int(ids[-1]) == 0


def test_a_tokenizer_file_is_used_instead_of_training(tmp_path: Path) -> None:
    write_corpus(tmp_path / "texts", n=8)
    given = train_tokenizer(["a small corpus for a given tokenizer " * 20], 300)
    given.save(str(tmp_path / "tokenizer.json"))
    data = text_config(tmp_path, path="texts", tokenizer="tokenizer.json")
    assert data.input_shape() == (1, CONTEXT, tokenizer_vocab(given))
    ds = Text.build(data)
    assert ds.num_classes == tokenizer_vocab(given) < 300 and ds.tokenizer_json == given.to_str()


def test_a_tokenizer_file_without_end_of_text_or_not_a_tokenizer_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bare = Tokenizer(models.BPE())
    bare.pre_tokenizer = pre_tokenizers.ByteLevel()
    bare.save("bare.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"data\.tokenizer .*bare\.json: the tokenizer has no <\|endoftext\|> token"):
        parse_config(study_with_data(source="text", tokenizer="bare.json"))
    with pytest.raises(ConfigError, match=r"data\.tokenizer .*junk\.json: not a Hugging Face tokenizer\.json"):
        parse_config(study_with_data(source="text", tokenizer="junk.json"))
    with pytest.raises(ConfigError, match=r"data\.tokenizer '/etc/hostname' is outside the project"):
        parse_config(study_with_data(source="text", tokenizer="/etc/hostname"))


# --------------------------------------------------------------------------- #
# a user's folder
# --------------------------------------------------------------------------- #
def test_a_user_folder_gives_one_document_per_txt_file(project: Path, built: TokenDataset) -> None:
    documents = list(folder_documents(project / "texts"))
    assert [n for n, _ in documents] == [f"texts:doc_{i:02d}.txt" for i in range(DOCS)]
    assert built.name == f"text-texts-s0-v{VOCAB}-t{CONTEXT}"


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    write_corpus(tmp_path / "texts", n=6)
    (tmp_path / "texts" / "latin.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(DataSourceError, match=r"data\.path .*texts: latin\.txt is not UTF-8 text"):
        Text.build(text_config(tmp_path, path="texts"))


def test_an_empty_folder_is_refused_at_validation(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not a .txt file")
    with pytest.raises(ConfigError, match=r"data\.path empty: holds no \.txt files"):
        parse_config(study_with_data(source="text", path="empty"))


# --------------------------------------------------------------------------- #
# settings
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"vocab_size": 256}, r"data\.vocab_size: Input should be greater than 256"),
        ({"vocab_size": 65537}, r"data\.vocab_size: Input should be less than or equal to 65536"),
        ({"context": 0}, r"data\.context: Input should be greater than or equal to 1"),
        ({"corpus": []}, r"data\.corpus: List should have at least 1 item"),
        ({"corpus": ["wikipedia"]}, r"data\.corpus\.0: Input should be 'pydoc' or 'stdlib'"),
        ({"corpus": ["pydoc", "pydoc"]}, r"data\.corpus: \['pydoc', 'pydoc'\] names a domain twice"),
        ({"max_chars": 0}, r"data\.max_chars: Input should be greater than or equal to 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"data\.val_fraction: 0\.5 with data\.test_fraction 0\.5 leaves no"),
        ({"path": "texts", "corpus": ["stdlib"]}, r"data\.corpus: \['stdlib'\] and data\.path are two corpora"),
    ],
)
def test_bad_text_settings_are_refused_naming_the_field(project: Path, monkeypatch, settings: dict, message: str) -> None:
    monkeypatch.chdir(project)
    with pytest.raises(ConfigError, match=message):
        parse_config(study_with_data(source="text", **settings))


def test_image_sources_validate_as_before_and_ignore_the_text_settings() -> None:
    cfg = parse_config(study_with_data(source="digits", vocab_size=1024, context=32, corpus=["stdlib"]))
    assert cfg.data.input_shape() == (1, 8, 10)
    assert "source_content" not in prepare_data.config_slice(cfg)


# --------------------------------------------------------------------------- #
# the dataset file
# --------------------------------------------------------------------------- #
def test_storage_dtype_is_the_smallest_that_holds_the_vocabulary() -> None:
    assert [storage_dtype(v) for v in (256, 257, 32768, 32769, 65536)] == [
        torch.uint8, torch.int16, torch.int16, torch.int32, torch.int32,
    ]


def test_save_load_round_trip_stores_small_ids_and_loads_int64(tmp_path: Path, built: TokenDataset) -> None:
    path = tmp_path / "dataset.pt"
    save_dataset(built, path)
    payload = torch.load(path, weights_only=True)
    assert payload["kind"] == "tokens" and payload["windows_train"].dtype == torch.int16
    back = load_dataset(path, kind="tokens")
    assert isinstance(back, TokenDataset)
    assert (back.name, back.num_classes, back.tokenizer_json) == (built.name, built.num_classes, built.tokenizer_json)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert getattr(back, field).dtype == torch.int64 and torch.equal(getattr(back, field), getattr(built, field))
    with pytest.raises(ValueError, match=r"dataset\.pt holds a tokens data set, not images"):
        load_dataset(path, kind="images")


def test_image_files_are_written_as_before(tmp_path: Path, small: Dataset) -> None:
    path = tmp_path / "images.pt"
    save_dataset(small, path)
    assert "kind" not in torch.load(path, weights_only=True)  # byte for byte the old format
    assert isinstance(load_dataset(path, kind="images"), Dataset)
    with pytest.raises(ValueError, match=r"images\.pt holds a images data set, not tokens"):
        load_dataset(path, kind="tokens")


def test_a_corrupted_or_foreign_token_file_is_named(tmp_path: Path, built: TokenDataset) -> None:
    path = tmp_path / "tokens.pt"
    save_dataset(built, path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cannot read dataset file .*tokens\.pt"):
        load_dataset(path)
    for change, problem in [
        ({"kind": "audio"}, r"tokens\.pt is not a kdflow dataset file \(unknown kind 'audio'\)"),
        ({"windows_val": built.windows("val").float()}, r"tokens\.pt holds an invalid token dataset: windows_val"),
        ({"num_classes": 8}, r"tokens\.pt holds an invalid token dataset: .*ids outside \[0, 8\)"),
        ({"tokenizer_json": "not json"}, r"tokens\.pt holds an invalid token dataset: .*tokenizer_json must be a serialised tokenizer"),
    ]:
        path.write_bytes(good)
        payload = torch.load(path, weights_only=True)
        torch.save({**payload, **change}, path)
        with pytest.raises(ValueError, match=problem):
            load_dataset(path)
    payload.pop("windows_test")
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"tokens\.pt holds an invalid token dataset: .*missing: \['windows_test'\]"):
        load_dataset(path)


def test_validate_names_the_inconsistent_field(built: TokenDataset) -> None:
    x = built.x_train.clone()
    x[0, 1] = (x[0, 1] + 1) % built.num_classes
    with pytest.raises(ValueError, match=r"y_train must be x_train shifted by one position"):
        TokenDataset(**{**vars(built), "x_train": x}).validate()
    with pytest.raises(ValueError, match=r"x_val has context 8, x_train has 16"):
        TokenDataset(**{**vars(built), "x_val": built.x_val[:, :8], "y_val": built.y_val[:, :8]}).validate()
    with pytest.raises(ValueError, match=r"x_test must be a non-empty int64 tensor"):
        TokenDataset(**{**vars(built), "x_test": built.x_test[:0], "y_test": built.y_test[:0]}).validate()


# --------------------------------------------------------------------------- #
# the content digest in prepare_data's key
# --------------------------------------------------------------------------- #
def test_the_digest_follows_the_corpus_read(tmp_path: Path, monkeypatch) -> None:
    write_corpus(tmp_path / "texts", n=4)
    data = text_config(tmp_path, path="texts")
    first = Text.content_digest(data)
    assert Text.content_digest(data) == first
    (tmp_path / "texts" / "doc_01.txt").write_text("replaced", encoding="utf-8")
    assert Text.content_digest(data) != first
    assert Text.content_digest(text_config(tmp_path, path="texts", max_chars=10)) == Text.content_digest(
        text_config(tmp_path, path="texts", max_chars=10)
    )
    builtin = DataConfig(source="text", max_chars=2000)
    before = Text.content_digest(builtin)
    topics = dict(pydoc_data.topics.topics)
    first_topic = sorted(topics)[0]
    monkeypatch.setattr(pydoc_data.topics, "topics", {**topics, first_topic: "Another Python's words."})
    assert Text.content_digest(builtin) != before  # another Python's documentation, another key
    monkeypatch.setattr(pydoc_data.topics, "topics", {**topics, "zzz-beyond-the-cap": "unread"})
    assert Text.content_digest(builtin) == before  # past max_chars: not read, not in the key


def test_the_digest_follows_the_tokenizer_file(tmp_path: Path) -> None:
    write_corpus(tmp_path / "texts", n=4)
    train_tokenizer(["one corpus"], 300).save(str(tmp_path / "tokenizer.json"))
    data = text_config(tmp_path, path="texts", tokenizer="tokenizer.json")
    first = Text.content_digest(data)
    train_tokenizer(["another corpus entirely"], 300).save(str(tmp_path / "tokenizer.json"))
    assert Text.content_digest(data) != first


def test_prepare_data_keys_on_the_digest_and_says_tokens(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(study_with_data(source="text", vocab_size=VOCAB, context=CONTEXT, max_chars=40_000))
    assert prepare_data.config_slice(cfg)["source_content"] == Text.content_digest(cfg.data)
    manifest = prepare_data.run(cfg, tmp_path / "out")
    meta = manifest["meta"]
    assert meta["kind"] == "tokens" and meta["context"] == CONTEXT and meta["num_classes"] == VOCAB
    assert meta["tokens"]["train"] == meta["num_train"] * (CONTEXT + 1)
    line = capsys.readouterr().out
    assert f"test windows of {CONTEXT} tokens" in line and "images" not in line
    assert isinstance(load_dataset(tmp_path / "out" / prepare_data.DATASET), TokenDataset)
