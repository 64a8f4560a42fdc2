"""The training loop: schedule values, determinism, and the non-finite guard."""
import math

import pytest
import torch

from kdlib.config import AugmentConfig, ScheduleConfig
from tests.helpers.methods import build
from kdlib.models import build_model
from kdlib.train import NonFiniteLossError, epoch_order, fit, learning_rate


def test_cosine_with_warmup_values():
    s = ScheduleConfig(epochs=10, lr=0.1, warmup_epochs=2, scheduler="cosine")
    steps = 4
    # warmup: linear per step, reaching lr at the end of warmup
    assert math.isclose(learning_rate(s, 0, 0, steps), 0.1 * (1 / 4) / 2)
    assert math.isclose(learning_rate(s, 1, 3, steps), 0.1)
    # cosine from the end of warmup: half way through the remaining 8 epochs -> lr / 2
    assert math.isclose(learning_rate(s, 6, 0, steps), 0.05)
    assert math.isclose(learning_rate(s, 2, 0, steps), 0.1)


def test_multistep_values():
    s = ScheduleConfig(epochs=240, lr=0.05, scheduler="multistep", milestones=[150, 180, 210], gamma=0.1)
    assert learning_rate(s, 149, 5, 10) == 0.05
    assert math.isclose(learning_rate(s, 150, 0, 10), 0.005)
    assert math.isclose(learning_rate(s, 239, 0, 10), 0.05e-3)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_order(1, 2, 50), epoch_order(1, 2, 50))
    assert not torch.equal(epoch_order(1, 2, 50), epoch_order(1, 3, 50))
    assert sorted(epoch_order(4, 0, 50).tolist()) == list(range(50))


def train_once(ds, seed):
    torch.manual_seed(seed)
    method = build("kd")
    model = method.build(build_model("resnet8", ds.num_classes, 3, 8))
    teacher = torch.randn(len(ds.x_train), ds.num_classes)
    result = fit(
        model, method, ds, ScheduleConfig(epochs=2, batch_size=16, lr=0.05, warmup_epochs=1), seed,
        AugmentConfig(padding=1, flip=True, seed=0), teacher_views=lambda e, idx: teacher[idx], log=lambda _: None,
    )
    return model, result


def test_training_is_deterministic_given_the_seed(tiny_ds):
    m1, r1 = train_once(tiny_ds, 5)
    m2, r2 = train_once(tiny_ds, 5)
    m3, _ = train_once(tiny_ds, 6)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in r1.history] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in r2.history
    ]
    assert not torch.equal(m1.classifier.weight, m3.classifier.weight)
    assert r1.history[0].keys() >= {"loss", "loss/ce", "loss/kd", "lr", "train_top1", "test_top1", "test_nll"}
    assert r1.best_top1 == max(h["test_top1"] for h in r1.history)


def test_non_finite_loss_names_the_term_and_epoch(tiny_ds):
    method = build("kd")
    model = build_model("mlp", tiny_ds.num_classes, 3, 8)
    nan = torch.full((len(tiny_ds.x_train), tiny_ds.num_classes), float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"\['kd'\].*epoch 1"):
        fit(model, method, tiny_ds, ScheduleConfig(epochs=1, batch_size=16), 0, AugmentConfig(),
            teacher_views=lambda e, idx: nan[idx], log=lambda _: None, label="kd seed 0")


def test_method_needing_a_teacher_refuses_to_run_without(tiny_ds):
    with pytest.raises(ValueError, match="needs teacher logits"):
        fit(build_model("mlp", 10, 3, 8), build("kd"), tiny_ds, ScheduleConfig(epochs=1), 0, AugmentConfig())
