"""MCMI teacher fine-tuning (kdlib.mcmi): class centroids and the CE + MCMI objective against
hand-computed values and closed-form gradients, never against the code's own output; the
centroid refresh, resuming, and the finetune_teacher step end to end on the tiny study."""
import json
import math

import numpy as np
import pytest
import torch

from kdlib.config import parse_config
from kdlib.mcmi import FinetuneSettings, MCMIFinetune, class_centroids
from tests.helpers.study import study_with_teachers
from tests.helpers.teachers import FixedLogits


def test_class_centroids_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]; softmax([0, 0]) = [1/2, 1/2]; softmax([ln 4, 0]) = [4/5, 1/5]
    logits = torch.tensor([[0.0, math.log(3)], [0.0, 0.0], [math.log(4), 0.0]])
    q = class_centroids(logits, torch.tensor([1, 1, 0]), num_classes=3)
    expected = [[0.8, 0.2], [0.375, 0.625], [0.5, 0.5]]  # class 2 has no sample: uniform
    assert q.shape == (3, 2) and torch.allclose(q, torch.tensor(expected), atol=1e-6)


def test_mcmi_objective_value_and_gradient_by_hand():
    # two samples of class 1, two classes; P = [1/4, 3/4] and [1/2, 1/2]; centroid Q_1 = [3/8, 5/8]
    z = [[0.0, math.log(3)], [0.0, 0.0]]
    target = torch.tensor([1, 1])
    lam = -0.25
    method = MCMIFinetune(FinetuneSettings(lam=lam), ds=None)
    method.centroids = torch.tensor([[0.5, 0.5], [0.375, 0.625]], dtype=torch.float64)
    model = FixedLogits(z)
    _, terms = method.forward_train(model, None, target, None, epoch=0)

    p = np.array([[0.25, 0.75], [0.5, 0.5]])
    q = np.array([0.375, 0.625])
    ce = -np.log(p[:, 1])
    kl = (p * np.log(p / q)).sum(1)
    assert terms["ce"].item() == pytest.approx(ce.mean(), rel=1e-12)
    assert terms["mcmi"].item() == pytest.approx(lam * kl.mean(), rel=1e-12)

    sum(terms.values()).backward()
    # d CE / dz = p - onehot(y); d KL(p || q) / dz_j = p_j (log(p_j / q_j) - KL); both / N
    onehot = np.array([[0.0, 1.0], [0.0, 1.0]])
    grad = (p - onehot + lam * p * (np.log(p / q) - kl[:, None])) / 2
    assert np.allclose(model.z.grad.numpy(), grad, atol=1e-12)


def test_mcmi_none_is_plain_ce():
    method = MCMIFinetune(FinetuneSettings(regularizer="none"), ds=None)
    _, terms = method.forward_train(FixedLogits([[1.0, 2.0, 0.0]]), None, torch.tensor([2]), None, 0)
    assert set(terms) == {"ce"}


def test_start_epoch_refreshes_the_centroids_from_the_current_model(tiny_ds):
    from kdlib.models import build_model
    from kdlib.train import predict

    torch.manual_seed(0)
    model = build_model("mlp", tiny_ds.num_classes, tiny_ds.num_channels, tiny_ds.image_size)
    method = MCMIFinetune(FinetuneSettings(), tiny_ds)
    method.start_epoch(model, 0)
    probs = torch.softmax(predict(model, tiny_ds.x_train, tiny_ds).double(), 1)
    for c in range(tiny_ds.num_classes):
        assert torch.allclose(method.centroids[c].double(), probs[tiny_ds.y_train == c].mean(0), atol=1e-6)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    before = method.centroids.clone()
    method.start_epoch(model, 1)
    assert not torch.allclose(before, method.centroids)


def test_finetune_step_end_to_end(tmp_path):
    """finetune_teacher on the tiny study: starts from the teacher, trains CE + MCMI, caches."""
    from kdlib import artifacts
    from tasks import cache_logits, finetune_teacher, prepare_data, train_teacher

    raw = study_with_teachers()
    raw["runtime"]["store"] = str(tmp_path / "store")
    cfg = parse_config(raw)
    data = prepare_data.run(cfg, tmp_path / "data")
    teacher = train_teacher.run(cfg, data, tmp_path / "teacher")
    tuned = finetune_teacher.run(cfg, "teacher_mcmi", data, teacher, tmp_path / "tuned")
    assert artifacts.is_complete(tmp_path / "tuned")
    meta = tuned["meta"]
    assert meta["regularizer"] == "mcmi" and meta["lam"] == -0.5 and meta["base_key"] == teacher["key"]
    history = json.loads((tmp_path / "tuned" / "history.json").read_text())
    assert len(history) == 2 and all(h["loss/mcmi"] < 0 for h in history)
    base = train_teacher.load_teacher(cfg, data, teacher).state_dict()
    after = train_teacher.load_teacher(cfg, data, tuned).state_dict()
    assert any(not torch.equal(base[k], after[k]) for k in base)
    # the key holds every setting that changes the artifact, and not the entry's name
    k = finetune_teacher.key(cfg, "teacher_mcmi", data, teacher)
    renamed = study_with_teachers(students__methods=["kd"])
    renamed["finetuned_teachers"] = {"other": renamed["finetuned_teachers"]["teacher_mcmi"]}
    assert finetune_teacher.key(parse_config(renamed), "other", data, teacher) == k
    settings = raw["finetuned_teachers"]["teacher_mcmi"]
    for changed in ({**settings, "lam": -1.0}, {**settings, "seed": 1}, {"regularizer": "none", "schedule": settings["schedule"]}):
        other = parse_config(study_with_teachers(finetuned_teachers={"teacher_mcmi": changed}))
        assert finetune_teacher.key(other, "teacher_mcmi", data, teacher) != k, changed
    logits = cache_logits.run(cfg, data, tuned, tmp_path / "logits")
    assert logits["meta"]["teacher_key"] == tuned["key"]


def test_mcmi_finetune_resumes_to_identical_weights(tiny_ds, tmp_path):
    """The centroids are a function of the weights at an epoch's start, so a run stopped after
    epoch 1 and resumed from its checkpoint ends with the uninterrupted run's weights."""
    from kdlib.config import AugmentConfig, ScheduleConfig
    from kdlib.models import build_model
    from kdlib.train import fit

    schedule = ScheduleConfig(epochs=2, batch_size=8, lr=0.05)

    class Stop(Exception):
        pass

    class StopAtEpoch1(MCMIFinetune):
        def start_epoch(self, model, epoch):
            if epoch == 1:
                raise Stop
            super().start_epoch(model, epoch)

    def run(method_cls, checkpoint):
        torch.manual_seed(0)
        model = build_model("mlp", tiny_ds.num_classes, tiny_ds.num_channels, tiny_ds.image_size)
        method = method_cls(FinetuneSettings(lam=-0.5), tiny_ds)
        fit(model, method, tiny_ds, schedule, 0, AugmentConfig(), checkpoint=checkpoint, log=lambda _: None)
        return model.state_dict()

    whole = run(MCMIFinetune, None)
    with pytest.raises(Stop):
        run(StopAtEpoch1, tmp_path / "ckpt.pt")
    resumed = run(MCMIFinetune, tmp_path / "ckpt.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
