"""Released CRD / mdistiller / DHKD teachers: their parameter names, and files in their format
(`{"model": state_dict}`, written here with random weights) loaded for every arch; damaged,
mismatched or unpinned-content files refused by name."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from kdlib.models import ARCHS, TOKEN_ARCHS, build_model
from kdlib.models.checkpoint import CheckpointError, load_checkpoint_model, load_official_state, read_state_dict
from tests.helpers.official import OFFICIAL_KEYS, OFFICIAL_KEYS_CRD, fingerprint, official_state_dict

SIZE, CLASSES = 16, 10  # small inputs keep the forward comparisons fast; the weights are the full models'


@pytest.mark.parametrize("arch", sorted(OFFICIAL_KEYS))
def test_parameter_names_are_the_official_ones(arch: str) -> None:
    """Under the official names (every head `classifier` here; WRN's blocks), each arch's
    state_dict has exactly the official model's entries and shapes (fingerprints of the official
    code, tests/helpers/official.py)."""
    assert fingerprint(official_state_dict(build_model(arch, 100))) == OFFICIAL_KEYS[arch]


def test_crd_mobilenetv2_head_name() -> None:
    model = build_model("MobileNetV2", 100)
    assert fingerprint(official_state_dict(model, crd_head=True)) == OFFICIAL_KEYS_CRD["MobileNetV2"]


def _randomised(arch: str) -> nn.Module:
    """`arch` with random weights and batch-norm statistics (so eval outputs depend on all of them)."""
    torch.manual_seed(1)
    model = build_model(arch, CLASSES, 3, SIZE)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _release(path, state: dict, **extra) -> str:
    """Write `state` as the official scripts save a teacher; returns the file's sha256."""
    torch.save({"epoch": 240, "model": state, "accuracy": torch.tensor(71.5), **extra}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in TOKEN_ARCHS])  # no released LM teachers
def test_released_format_loads_for_every_arch(arch: str, tmp_path) -> None:
    source = _randomised(arch)
    path = tmp_path / f"{arch}.pth"
    digest = _release(path, official_state_dict(source), optimizer={"state": {}, "param_groups": [{"lr": 0.05}]})
    model, got = load_checkpoint_model(arch, CLASSES, 3, SIZE, path, sha256=digest)
    assert got == digest and not model.training
    ours, theirs = model.state_dict(), source.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x)[0], source(x)[0])


def test_crd_mobilenetv2_and_bare_or_dataparallel_state_dicts_load(tmp_path) -> None:
    source = _randomised("MobileNetV2")
    crd = tmp_path / "crd.pth"
    _release(crd, official_state_dict(source, crd_head=True))
    bare = tmp_path / "bare.pth"
    torch.save(official_state_dict(source), bare)
    wrapped = tmp_path / "dp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in official_state_dict(source).items()}}, wrapped)
    for path in (crd, bare, wrapped):
        model, _ = load_checkpoint_model("MobileNetV2", CLASSES, 3, SIZE, path)
        assert torch.equal(model.classifier.weight, source.classifier.weight)


def test_numpy_scalars_beside_the_weights_are_read(tmp_path) -> None:
    """Some training scripts save the accuracy as a numpy scalar: data, not code, so it loads."""
    path = tmp_path / "numpy.pth"
    source = _randomised("resnet8")
    _release(path, official_state_dict(source), best_acc=np.float64(71.2), epochs=np.int64(240))
    model, _ = load_checkpoint_model("resnet8", CLASSES, 3, SIZE, path)
    assert torch.equal(model.classifier.weight, source.classifier.weight)


def test_sha256_pin_refuses_other_content(tmp_path) -> None:
    path = tmp_path / "resnet8.pth"
    digest = _release(path, official_state_dict(_randomised("resnet8")))
    other = "0" * 64
    with pytest.raises(CheckpointError, match=f"sha256 is {digest}, not the expected {other}"):
        read_state_dict(path, sha256=other)
    assert read_state_dict(path, sha256=digest.upper())[1] == digest


def test_truncated_and_foreign_files_are_refused(tmp_path) -> None:
    path = tmp_path / "resnet8.pth"
    _release(path, official_state_dict(_randomised("resnet8")))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: torch\.load\(weights_only=True\) cannot read it"):
        read_state_dict(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read it"):
        read_state_dict(text)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


class Payload:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_never_unpickled(tmp_path) -> None:
    path = tmp_path / "pickle.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(path)


def test_not_a_state_dict_is_refused(tmp_path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"net": {"a": 1}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"not a state_dict of tensors nor \{'model': state_dict\}.*epoch"):
        read_state_dict(path)


def test_wrong_keys_and_shapes_are_named(tmp_path) -> None:
    state = official_state_dict(_randomised("resnet8"))
    del state["layer1.0.conv1.weight"]
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(100, 64)  # a CIFAR-100 head for a 10-class study
    path = tmp_path / "wrong.pth"
    _release(path, state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_model("resnet8", CLASSES, 3, SIZE, path)
    message = str(err.value)
    assert "does not fit a ResNet" in message and "wrong.pth" in message
    assert "missing: layer1.0.conv1.weight" in message
    assert "unexpected: layer9.0.conv1.weight" in message
    assert "shape mismatch: fc.weight (100, 64) (the model's classifier.weight: (10, 64))" in message


def test_another_arch_is_refused() -> None:
    """A wrn_40_2 file named as a resnet8 teacher: every name is listed as wrong, none loads."""
    model = build_model("resnet8", CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing: conv1\.weight|unexpected: block1"):
        load_official_state(model, official_state_dict(build_model("wrn_40_2", CLASSES)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_batch_counters_keep_the_models() -> None:
    """Files from PyTorch < 0.4.1 have no `num_batches_tracked`: the model's counters stay."""
    source = _randomised("resnet8")
    state = {k: v for k, v in official_state_dict(source).items() if not k.endswith("num_batches_tracked")}
    model = build_model("resnet8", CLASSES)
    load_official_state(model, state)
    assert torch.equal(model.bn1.weight, source.bn1.weight) and int(model.bn1.num_batches_tracked) == 0
