"""KD++ and DKD++ (kdlib.methods.nd): the projector, and their terms against a hand
computation of the spec's formula."""
import math

import pytest
import torch

from kdlib.losses.dkd import dkd_loss
from kdlib.models import build_model
from kdlib.models.heads import ProjectedFeature
from tests.helpers.methods import build, setup_cache_reader, teacher_batch


def nd_by_hand(e_s, mu, y, t_norm):
    """The spec's formula, one sample at a time in Python floats."""
    total = 0.0
    for row, label, tn in zip(e_s.tolist(), y.tolist(), t_norm.tolist()):
        m = mu[label].tolist()
        m_norm = math.sqrt(sum(v * v for v in m))
        s_norm = math.sqrt(sum(v * v for v in row))
        total += 1 - sum(a * b / m_norm for a, b in zip(row, m)) / max(s_norm, tn)
    return total / len(y)


def test_projector_only_when_widths_differ_and_dropped_at_export():
    method, model, _, _ = setup_cache_reader("kd++", d=16)
    assert isinstance(model, ProjectedFeature) and isinstance(model.projector, torch.nn.Linear)
    assert (model.projector.in_features, model.projector.out_features) == (256, 16)
    exported = method.exported(model)
    assert not isinstance(exported, ProjectedFeature) and "projector.weight" not in exported.state_dict()
    _, same, _, _ = setup_cache_reader("dkd++", d=256)
    assert isinstance(same.projector, torch.nn.Identity)
    with pytest.raises(ValueError, match="teacher's feature width"):
        build("kd++").build(build_model("mlp", 10, 1, 8))


@pytest.mark.parametrize("warmup_start,ramp", [("official", 4 / 20), ("one_epoch_ahead", 5 / 20)])
@pytest.mark.parametrize("name", ["kd++", "dkd++"])
def test_nd_methods_terms_by_hand(name, warmup_start, ramp):
    """At epoch 4 (from 0): the ND code's ramp 4/20 (default), kdflow's earlier 5/20 by name."""
    settings = {} if warmup_start == "official" else {"warmup_start": warmup_start}
    method, model, x, y = setup_cache_reader(name, **settings)
    assert method.settings.warmup_start == warmup_start
    t = teacher_batch()
    logits, terms = method.forward_train(model, x, y, t, epoch=4)
    with torch.no_grad():
        plain_logits, plain_feat = model.backbone_model(x)
        projected = model.projector(plain_feat)
    torch.testing.assert_close(logits, plain_logits)
    assert set(terms) == ({"ce", "kd", "nd"} if name == "kd++" else {"ce", "dkd", "nd"})
    ce = torch.nn.functional.cross_entropy(plain_logits, y)
    nd_weight = 2.0 if name == "kd++" else 0.5
    torch.testing.assert_close(terms["ce"], ce)
    nd = nd_by_hand(projected, t.class_means, y, t.feature_norms)
    assert terms["nd"].item() == pytest.approx(nd_weight * nd, rel=1e-5)
    if name == "kd++":
        p_t = (t.logits / 4).softmax(1)
        kl = (p_t * (p_t.log() - (plain_logits / 4).log_softmax(1))).sum(1).mean() * 16
        torch.testing.assert_close(terms["kd"], ramp * 3.5 * kl)
    else:
        torch.testing.assert_close(terms["dkd"], ramp * dkd_loss(plain_logits, t.logits, y, 2.0, 8.0, 4.0))
    sum(terms.values()).backward()
    assert model.projector.weight.grad is not None and model.projector.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("warmup_start,factors", [
    ("official", [(0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0)]),  # the ND code: min(epoch / 4, 1)
    ("one_epoch_ahead", [(0, 0.25), (2, 0.75), (3, 1.0)]),  # kdflow's earlier: min((epoch + 1) / 4, 1)
])
def test_kd_pp_ramps_only_the_kd_term(warmup_start, factors):
    method, model, x, y = setup_cache_reader("kd++", warmup_epochs=4, warmup_start=warmup_start)
    t = teacher_batch()
    full = method.forward_train(model, x, y, t, epoch=10)[1]
    for epoch, factor in factors:
        terms = method.forward_train(model, x, y, t, epoch)[1]
        torch.testing.assert_close(terms["kd"], factor * full["kd"])
        torch.testing.assert_close(terms["nd"], full["nd"])


@pytest.mark.parametrize("name", ["kd++", "dkd++"])
def test_nd_warmup_start_is_named_and_zero_warmup_means_no_ramp(name):
    from kdlib.methods.base import validate_method_entry
    from kdlib.methods.nd import nd_warmup_ramp

    with pytest.raises(ValueError, match="warmup_start"):
        validate_method_entry(name, {"warmup_start": "epoch_plus_one"})
    for start in ("official", "one_epoch_ahead"):
        assert nd_warmup_ramp(0, 0, start) == 1.0  # warmup 0: no ramp (the ND code would divide by 0)
        assert nd_warmup_ramp(25, 20, start) == 1.0
    assert nd_warmup_ramp(0, 20, "official") == 0.0 and nd_warmup_ramp(0, 20, "one_epoch_ahead") == 1 / 20
