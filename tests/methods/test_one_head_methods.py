"""The one-head logit methods: KD+LS, DKD+LS, DIST, PLD, NKD, Z-loss, LDR-KL, SinKD.

For each: registered, paper defaults, unknown settings rejected with the field path,
terms named and equal to the reference loss times its weight, gradients reach every
parameter, and one epoch through `kdlib.train.fit` logs `loss/<term>`.
"""
import re

import pytest
import torch

from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.data.sources.synthetic import make_synthetic
from kdlib.losses.dist import dist_loss
from kdlib.losses.dkd import dkd_loss
from kdlib.losses.kd import kd_loss
from kdlib.losses.ldr import ldr_kl_loss
from kdlib.losses.logit_standardization import logit_standardize
from kdlib.losses.nkd import nkd_loss
from kdlib.losses.pld import pld_loss
from kdlib.losses.sinkd import sinkhorn_loss, soft_cross_entropy
from kdlib.losses.zloss import z_loss
from kdlib.methods.base import method_class, method_names, validate_method_entry
from kdlib.models import build_model
from kdlib.train import fit
from tests.helpers.methods import build, setup

LS = logit_standardize


# name -> (documented defaults, term names, needs_teacher)
ONE_HEAD = {
    "kd+ls": ({"temperature": 2.0, "ce_weight": 0.1, "kd_weight": 9.0}, {"ce", "kd"}, True),
    "dkd+ls": (
        {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 2.0, "warmup_epochs": 20, "kd_weight": 9.0},
        {"ce", "dkd"},
        True,
    ),
    "dist": ({"ce_weight": 1.0, "beta": 2.0, "gamma": 2.0, "temperature": 4.0}, {"ce", "dist"}, True),
    "pld": ({"temperature": 4.0}, {"pld"}, True),
    "nkd": ({"ce_weight": 1.0, "temperature": 3.0, "gamma": 3.5}, {"ce", "nkd"}, True),
    "zloss": ({"a": 1.0, "b": 5.0, "std_eps": 1e-7}, {"zloss"}, False),
    "ldr": ({"lam": 10.0, "delta": 0.1}, {"ldr"}, False),
    "sinkd": (
        {"alpha": 0.8, "temperature": 2.0, "kd_form": "soft_ce", "beta": 0.001, "sinkhorn_temperature": 2.0,
         "epsilon": 0.1, "iterations": 20},
        {"ce", "kd", "sinkhorn"},
        True,
    ),
}
NAMES = list(ONE_HEAD)


def expected_terms(name, logits, y, t, epoch=0):
    """The reference losses called directly, times their weights (paper defaults)."""
    ce = torch.nn.functional.cross_entropy(logits, y)
    if name == "kd+ls":
        return {"ce": 0.1 * ce, "kd": 9.0 * kd_loss(LS(logits), LS(t), 2.0)}
    if name == "dkd+ls":
        ramp = min((epoch + 1) / 20, 1.0)
        # the LS code's DKD+LS: alpha and beta times --kd-weight 9
        return {"ce": ce, "dkd": ramp * dkd_loss(LS(logits), LS(t), y, 9.0, 72.0, 2.0)}
    if name == "dist":
        return {"ce": ce, "dist": dist_loss(logits, t, 2.0, 2.0, 4.0)}
    if name == "pld":
        return {"pld": pld_loss(logits, t, y, 4.0)}
    if name == "nkd":
        return {"ce": ce, "nkd": nkd_loss(logits, t, y, 3.0, 3.5)}
    if name == "zloss":
        return {"zloss": z_loss(logits, y, 1.0, 5.0)}
    if name == "ldr":
        return {"ldr": ldr_kl_loss(logits, y, 10.0, 0.1)}
    if name == "sinkd":
        return {
            "ce": 0.2 * ce,
            "kd": 0.8 * soft_cross_entropy(logits, t, 2.0),
            "sinkhorn": 0.001 * sinkhorn_loss(logits, t, 2.0, 0.1, 20),
        }
    raise AssertionError(name)


def test_registry_has_the_one_head_methods():
    assert set(NAMES) <= set(method_names())


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_the_documented_ones(name):
    defaults, _, needs_teacher = ONE_HEAD[name]
    settings = validate_method_entry(name, None)
    assert settings.model_dump(exclude={"method"}) == defaults
    assert settings.method == name
    assert method_class(name).needs_teacher is needs_teacher
    assert method_class(name).dual_head is False


@pytest.mark.parametrize("name", NAMES)
def test_unknown_setting_is_rejected_with_its_path(name):
    with pytest.raises(ValueError, match=re.escape(f"methods.{name}.bogus: unknown key")):
        validate_method_entry(name, {"bogus": 1})
    # a variant entry names the registry method
    with pytest.raises(ValueError, match=r"methods\.variant\.bogus: unknown key"):
        validate_method_entry("variant", {"method": name, "bogus": 1})


@pytest.mark.parametrize("name", NAMES)
def test_terms_equal_the_reference_losses_and_backpropagate(name):
    method, model, x, y, teacher = setup(name)
    model.eval()  # deterministic forward, so the reference call sees the same logits
    logits, terms = method.forward_train(model, x, y, teacher if method.needs_teacher else None, epoch=0)
    assert logits.shape == (6, 10)
    assert set(terms) == ONE_HEAD[name][1]
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    with torch.no_grad():
        ref_logits, _ = model(x)
    torch.testing.assert_close(logits, ref_logits)
    expected = expected_terms(name, ref_logits, y, teacher)
    for k, v in expected.items():
        torch.testing.assert_close(terms[k].detach(), v, msg=f"{name}: term {k!r}")
    sum(terms.values()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_student_alone_methods_ignore_a_teacher():
    for name in ("zloss", "ldr"):
        method, model, x, y, teacher = setup(name)
        model.eval()
        _, without = method.forward_train(model, x, y, None, 0)
        _, with_t = method.forward_train(model, x, y, teacher, 0)
        assert without.keys() == with_t.keys()
        for k in without:
            torch.testing.assert_close(without[k], with_t[k])


@pytest.fixture(scope="module")
def one_head_ds():
    return make_synthetic(
        seed=0, num_train_per_class=4, num_test_per_class=2, image_size=8, num_classes=10, num_superclasses=2
    )


@pytest.mark.parametrize("name", NAMES)
def test_one_epoch_through_fit(name, one_head_ds):
    ds = one_head_ds
    torch.manual_seed(0)
    method = build(name)
    model = method.build(build_model("mlp", ds.num_classes, ds.num_channels, ds.image_size))
    T = torch.randn(len(ds.x_train), ds.num_classes, generator=torch.Generator().manual_seed(1)) * 3
    result = fit(
        model, method, ds, ScheduleConfig(epochs=1, batch_size=16, lr=0.05), 0,
        AugmentConfig(padding=1, flip=True, seed=0),
        teacher_views=(lambda e, idx: T[idx]) if method.needs_teacher else None,
        log=lambda _: None,
    )
    assert len(result.history) == 1
    record = result.history[0]
    assert {k for k in record if k.startswith("loss/")} == {f"loss/{t}" for t in ONE_HEAD[name][1]}
    assert all(torch.isfinite(torch.tensor(v)) for k, v in record.items() if k != "seconds")
    assert abs(record["loss"] - sum(record[f"loss/{t}"] for t in ONE_HEAD[name][1])) < 1e-4 * max(1.0, abs(record["loss"]))
