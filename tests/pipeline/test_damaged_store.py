"""A damaged store heals itself: an incomplete or malformed artifact folder and a truncated or
altered training checkpoint are quarantined (moved aside, never deleted) and rebuilt, ending with
the bytes of a clean run; aggregate's results folder is swapped in whole or not at all."""
import copy
import hashlib
import io
import json
import re

import pytest
import torch

from kdlib import artifacts
from kdlib.config import parse_config
from tasks import aggregate, cache_logits, common, evaluate, prepare_data, report, train_student, train_teacher
from tests.helpers.study import TINY_STUDY


def study(store, methods=("ce",)):
    raw = copy.deepcopy(TINY_STUDY)
    raw["students"]["methods"] = list(methods)
    raw["methods"] = {m: {} for m in methods}
    raw["tracking"]["enabled"] = False
    raw["runtime"]["store"] = str(store)
    return parse_config(raw)


def quarantined(store, relative):
    """The quarantined copies of `<store>/<relative>`."""
    folder = store / "quarantine" / relative
    return sorted(folder.parent.glob(f"{folder.name}-*")) if folder.parent.is_dir() else []


@pytest.mark.parametrize("damage, problem", [
    (lambda d: (d / "manifest.json").unlink(), "has no manifest.json (its step did not finish)"),
    (lambda d: (d / "manifest.json").write_text("[]"),
     "is damaged ({d}/manifest.json is not a valid manifest: expected a JSON object with step, key, files and meta, got list)"),
    (lambda d: (d / "manifest.json").write_text('{"files": 3}'),
     "is damaged ({d}/manifest.json is not a valid manifest: 'step' is missing)"),
    (lambda d: (d / "dataset.pt").write_bytes((d / "dataset.pt").read_bytes()[:100]),
     "is damaged (artifact {d}/dataset.pt is missing or does not match its manifest hash)"),
])
def test_a_damaged_store_folder_is_quarantined_and_rebuilt(tmp_path, capsys, damage, problem):
    cfg = study(tmp_path / "store")
    clean = prepare_data.cached(cfg)
    folder = common.store_dir(cfg, "prepare_data", clean["key"])
    original = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}
    damage(folder)
    damaged = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()

    rebuilt = prepare_data.cached(cfg)  # every later run used to fail with the same traceback

    assert rebuilt["files"] == clean["files"] and artifacts.is_complete(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")} == original
    (moved,) = quarantined(tmp_path / "store", f"prepare_data/{clean['key']}")
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == damaged  # nothing deleted
    warning = f"warning: {folder} {problem.format(d=folder)}; moved it to {moved}"
    assert warning in capsys.readouterr().err.splitlines()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data.run(study(tmp_path_factory.mktemp("store")), tmp_path_factory.mktemp("data"))


def test_a_damaged_checkpoint_is_quarantined_and_training_ends_with_the_clean_weights(data, tmp_path, monkeypatch, capsys):
    """A truncated checkpoint and one whose payload does not match its sha256 (weights altered,
    which a run that trusted it would resume from) both give the clean run's model bytes."""
    saved = []
    write = artifacts.save_checkpoint

    def keep(path, state):
        write(path, state)
        saved.append(path.read_bytes())

    monkeypatch.setattr(artifacts, "save_checkpoint", keep)
    clean_cfg = study(tmp_path / "clean")
    clean = train_student.cached(clean_cfg, "ce", 0, data, None)
    monkeypatch.setattr(artifacts, "save_checkpoint", write)
    weights = (tmp_path / "clean" / "train_student" / clean["key"] / train_student.MODEL).read_bytes()
    after_epoch_1 = saved[0]  # a genuine checkpoint, as a run killed in epoch 2 leaves it
    header, payload = after_epoch_1.split(b"\n", 1)
    state = torch.load(io.BytesIO(payload), weights_only=True)
    for tensor in state["model"].values():
        if tensor.is_floating_point():
            tensor.add_(1.0)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    altered = buffer.getvalue()

    cases = {
        "truncated": after_epoch_1[: len(after_epoch_1) // 2],
        "wrong_hash": header + b"\n" + altered,  # the sha256 of the original payload
    }
    for name, bad in cases.items():
        store = tmp_path / name
        cfg = study(store)
        checkpoint = common.checkpoint_path(cfg, "train_student", clean["key"])
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(bad)
        capsys.readouterr()
        manifest = train_student.cached(cfg, "ce", 0, data, None)
        out = capsys.readouterr()
        assert (store / "train_student" / manifest["key"] / train_student.MODEL).read_bytes() == weights, name
        assert "resuming" not in out.out and "epoch 1/2" in out.out
        (moved,) = quarantined(store, f"checkpoints/train_student/{clean['key']}.pt")
        assert moved.read_bytes() == bad
        assert re.search(rf"^warning: {re.escape(str(checkpoint))} \(training checkpoint\) .*; training starts from scratch; "
                         rf"moved it to {re.escape(str(moved))}$", out.err, re.M), out.err

    # the control: the same altered weights with their own, right sha256 are resumed from
    store = tmp_path / "trusted"
    cfg = study(store)
    checkpoint = common.checkpoint_path(cfg, "train_student", clean["key"])
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"KDFLOW-CHECKPOINT sha256=" + hashlib.sha256(altered).hexdigest().encode()
                           + b"\n" + altered)
    manifest = train_student.cached(cfg, "ce", 0, data, None)
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert (store / "train_student" / manifest["key"] / train_student.MODEL).read_bytes() != weights


def test_aggregate_swaps_its_results_in_whole_or_leaves_them(data, tmp_path, monkeypatch):
    cfg = study(tmp_path / "store", methods=("ce", "kd"))
    teacher = train_teacher.run(cfg, data, tmp_path / "teacher")
    logits = cache_logits.run(cfg, data, teacher, tmp_path / "logits")
    evaluations = [
        evaluate.run(cfg, data, logits, train_student.run(cfg, m, 0, data, logits, tmp_path / m), tmp_path / f"eval-{m}")
        for m in cfg.students.methods
    ]
    results = tmp_path / "results"
    artifacts.write_text(results / "summary.md", "the previous study")
    artifacts.write_text(results / "curves" / "dkd.json", "[]")
    previous = {p.relative_to(results): p.read_bytes() for p in results.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("killed while drawing the figures")

    monkeypatch.setattr(report, "write", crash)
    with pytest.raises(RuntimeError):
        aggregate.run(cfg, teacher, evaluations, results)
    assert {p.relative_to(results): p.read_bytes() for p in results.rglob("*") if p.is_file()} == previous
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".results")) == []

    monkeypatch.undo()
    manifest = aggregate.run(cfg, teacher, evaluations, results)
    assert manifest["dir"] == str(results) and artifacts.is_complete(results)
    assert json.loads((results / "manifest.json").read_text())["dir"] == str(results)
    assert not (results / "curves" / "dkd.json").exists()  # nothing of the previous study is left
    assert sorted(p.name for p in (results / "curves").iterdir()) == ["ce.json", "kd.json"]
    assert "| kd |" in (results / "summary.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".results")) == []
