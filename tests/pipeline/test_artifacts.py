"""kdlib.artifacts: atomic tensor files whose bytes depend only on their tensors; manifests checked
for shape and hashes; writes guarded by the allowed roots; quarantine; checkpoints carrying their
hash; a folder swapped in whole."""
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from kdlib import artifacts


def test_same_tensors_give_the_same_bytes_at_any_path(tmp_path):
    obj = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.tensor([1, 2], dtype=torch.int64)}
    artifacts.save_tensors(tmp_path / "a.pt", obj)
    artifacts.save_tensors(tmp_path / "sub" / "model.pt", obj)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "model.pt").read_bytes()
    loaded = artifacts.load_tensors(tmp_path / "a.pt")
    assert loaded.keys() == obj.keys() and all(torch.equal(loaded[k], obj[k]) for k in obj)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "sub"]  # no temporary file left


# --- manifests: shape and hashes, every failure a ValueError naming the path ---------------

DIGEST = "0" * 64


@pytest.mark.parametrize("manifest, problem", [
    ([], "expected a JSON object with step, key, files and meta, got list"),
    ({"files": 3}, "'step' is missing"),
    ({"step": "s", "key": "k", "files": 3, "meta": {}}, "'files' must be an object of file name -> sha256, got int"),
    ({"step": "s", "key": "k", "files": {}, "meta": []}, "'meta' must be an object, got list"),
    ({"step": 1, "key": "k", "files": {}, "meta": {}}, "'step' must be a string, got int"),
    ({"step": "s", "key": "k", "files": {"a.pt": "abc"}, "meta": {}}, "files: 'a.pt' must map to a sha256 (64 lowercase hex digits), got 'abc'"),
    ({"step": "s", "key": "k", "files": {"../../etc/passwd": DIGEST}, "meta": {}}, "files: '../../etc/passwd' is not a file name inside the folder"),
    ({"step": "s", "key": "k", "files": {"/etc/passwd": DIGEST}, "meta": {}}, "files: '/etc/passwd' is not a file name inside the folder"),
])
def test_a_manifest_of_the_wrong_shape_is_a_value_error_naming_it(tmp_path, manifest, problem):
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    for verify in (True, False):
        with pytest.raises(ValueError) as err:
            artifacts.read_manifest(tmp_path, verify=verify)
        assert str(err.value) == f"{tmp_path / 'manifest.json'} is not a valid manifest: {problem}"
    assert not artifacts.is_complete(tmp_path)


def test_a_manifest_that_is_not_json_is_a_value_error_naming_it(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b'{"step": "s", \xff')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'manifest.json'} is not a valid manifest: ")):
        artifacts.read_manifest(tmp_path)


def test_a_file_that_fails_its_hash_is_a_value_error_naming_it(tmp_path):
    artifacts.write_text(tmp_path / "a.txt", "a")
    artifacts.write_manifest(tmp_path, "s", "k", {})
    assert artifacts.read_manifest(tmp_path)["files"] == {"a.txt": hashlib.sha256(b"a").hexdigest()}
    (tmp_path / "a.txt").write_text("b")
    with pytest.raises(ValueError, match=re.escape(f"artifact {tmp_path / 'a.txt'} is missing or does not match its manifest hash")):
        artifacts.read_manifest(tmp_path)


# --- the one guarded write helper --------------------------------------------------------


def test_writes_outside_the_allowed_roots_are_refused(tmp_path):
    project, store = tmp_path / "project", tmp_path / "store"
    project.mkdir()
    (project / "escape").symlink_to(tmp_path)
    with artifacts.writes_under(project, store):
        artifacts.write_text(project / "results" / "a.txt", "in the project")
        artifacts.write_text(store / "step" / "a.txt", "in the store")
        for target in (project / ".." / "outside", project / "escape" / "outside"):
            with pytest.raises(ValueError) as err:
                artifacts.write_text(target, "no")
            assert str(err.value).startswith(f"refusing to write {target}: it resolves to {tmp_path / 'outside'}, outside the allowed roots")
        with pytest.raises(ValueError, match="refusing to write"):
            artifacts.save_tensors(tmp_path / "outside.pt", {})
        with pytest.raises(ValueError, match="refusing to write"):
            artifacts.quarantine(tmp_path / "outside", "is damaged", root=project)
    assert not (tmp_path / "outside").exists() and not (tmp_path / "outside.pt").exists()
    artifacts.write_text(tmp_path / "outside", "unrestricted again")  # the roots ended with the block
    assert artifacts.write_roots() is None


def test_a_relative_escape_from_the_working_directory_is_refused(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    with artifacts.writes_under(".", "store"):
        with pytest.raises(ValueError, match=re.escape("refusing to write ../outside: it resolves to")):
            artifacts.write_text(Path("../outside"), "no")
    assert not (tmp_path / "outside").exists()


# --- quarantine ----------------------------------------------------------------------------


def test_quarantine_moves_a_folder_aside_and_says_where(tmp_path, capsys):
    store = tmp_path / "store"
    folder = store / "train_student" / "abc"
    artifacts.write_text(folder / "model.pt", "half")
    with artifacts.writes_under(tmp_path, store):
        dest = artifacts.quarantine(folder, "has no manifest.json (its step did not finish)")
    assert not folder.exists() and (dest / "model.pt").read_text() == "half"
    assert re.fullmatch(re.escape(str(store / "quarantine" / "train_student" / "abc")) + r"-\d{8}T\d{6}\.\d{6}Z", str(dest))
    assert capsys.readouterr().err == f"warning: {folder} has no manifest.json (its step did not finish); moved it to {dest}\n"


# --- checkpoints carry their hash --------------------------------------------------------------


def _state():
    return {"model": {"w": torch.arange(6.0)}, "history": [{"epoch": 1, "loss": 0.5}], "best_epoch": 1, "best_top1": 10.0}


def test_a_checkpoint_round_trips_with_its_hash(tmp_path):
    path = tmp_path / "k.pt"
    artifacts.save_checkpoint(path, _state())
    data = path.read_bytes()
    header, payload = data.split(b"\n", 1)
    assert header == b"KDFLOW-CHECKPOINT sha256=" + hashlib.sha256(payload).hexdigest().encode()
    state = artifacts.load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.arange(6.0)) and state["history"] == _state()["history"]
    assert artifacts.load_checkpoint(tmp_path / "none.pt") is None


def _flip_last_byte(data):
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data[: len(data) // 2], "does not match its sha256"),
    (lambda data: data[:20], "is not a checkpoint with a sha256 header"),
    (_flip_last_byte, "does not match its sha256"),
    (lambda data: data.split(b"\n", 1)[1], "is not a checkpoint with a sha256 header"),  # an old, headerless torch.save file
])
def test_a_damaged_checkpoint_is_quarantined_not_loaded(tmp_path, capsys, damage, problem):
    store = tmp_path / "store"
    path = store / "checkpoints" / "train_student" / "k.pt"
    artifacts.save_checkpoint(path, _state())
    bad = damage(path.read_bytes())
    path.write_bytes(bad)
    with artifacts.writes_under(tmp_path, store):
        assert artifacts.load_checkpoint(path) is None
    assert not path.exists()
    (moved,) = (store / "quarantine" / "checkpoints" / "train_student").iterdir()
    assert moved.name.startswith("k.pt-") and moved.read_bytes() == bad
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {path} (training checkpoint) {problem}") and err.endswith(
        f"; training starts from scratch; moved it to {moved}\n")


def test_a_checkpoint_with_a_valid_hash_that_torch_cannot_read_is_quarantined(tmp_path, capsys):
    payload = b"not a torch file"
    path = tmp_path / "k.pt"
    path.write_bytes(b"KDFLOW-CHECKPOINT sha256=" + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    assert artifacts.load_checkpoint(path) is None
    assert "cannot be read by torch.load(weights_only=True)" in capsys.readouterr().err
    assert [p.name[:5] for p in (tmp_path / "quarantine").iterdir()] == ["k.pt-"]


# --- a folder swapped in whole -------------------------------------------------------------


def test_staged_dir_swaps_a_whole_folder_in_or_leaves_the_old_one(tmp_path):
    results = tmp_path / "results"
    artifacts.write_text(results / "summary.md", "old study")
    artifacts.write_text(results / "curves" / "gone.json", "[]")
    with pytest.raises(RuntimeError):
        with artifacts.staged_dir(results) as staging:
            artifacts.write_text(staging / "summary.md", "half of a new study")
            raise RuntimeError("crash while writing")
    assert (results / "summary.md").read_text() == "old study" and (results / "curves" / "gone.json").exists()
    with artifacts.staged_dir(results) as staging:
        artifacts.write_text(staging / "summary.md", "new study")
        manifest = artifacts.write_manifest(staging, "aggregate", "k", {}, final_dir=results)
    assert manifest["dir"] == str(results) and json.loads((results / "manifest.json").read_text())["dir"] == str(results)
    assert sorted(p.relative_to(results).as_posix() for p in results.rglob("*")) == ["manifest.json", "summary.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no staging folder left
    assert artifacts.is_complete(results)
