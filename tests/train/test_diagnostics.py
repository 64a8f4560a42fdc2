"""Diagnostics against hand-made cases and independent formulas."""
import math

import pytest
import scipy.stats
import torch
from torch import nn

from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.diagnostics import (
    Probe, equiangularity, equinorm, gradient_conflict, is_head_parameter, linear_heads, neural_collapse,
    nontarget_rank_correlation, split_parameters, teacher_fidelity,
)
from tests.helpers.methods import build
from kdlib.models import build_model
from kdlib.models.heads import DualHead
from kdlib.train import fit


def simplex_etf(c: int, d: int, seed: int = 0) -> torch.Tensor:
    """C unit vectors at pairwise cosine -1/(C-1), randomly rotated into d >= C dims."""
    m = math.sqrt(c / (c - 1)) * (torch.eye(c, dtype=torch.float64) - 1.0 / c)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return m @ q[:c]


# --------------------------------------------------------------------------- neural collapse
def test_collapsed_features_have_nc1_zero_and_noise_makes_it_positive():
    means = torch.randn(5, 8, dtype=torch.float64)
    labels = torch.arange(5).repeat(4)
    assert abs(neural_collapse(means[labels], labels)["nc/nc1"]) < 1e-12
    noisy = means[labels] + 0.1 * torch.randn(20, 8, dtype=torch.float64)
    assert neural_collapse(noisy, labels)["nc/nc1"] > 1e-4


def test_nc1_one_dimensional_hand_case():
    # class 0 at -1 +- a, class 1 at 1 +- a: Sigma_W = a^2, Sigma_B = 1, C = 2 -> NC1 = a^2 / 2
    a = 0.3
    features = torch.tensor([[-1 - a], [-1 + a], [1 - a], [1 + a]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    assert math.isclose(neural_collapse(features, labels)["nc/nc1"], a * a / 2, rel_tol=1e-12)


def test_nc1_is_invariant_to_scale_rotation_and_translation():
    features, labels = torch.randn(30, 6, dtype=torch.float64), torch.arange(3).repeat(10)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    base = neural_collapse(features, labels)["nc/nc1"]
    assert math.isclose(neural_collapse(3.0 * features @ q + 5.0, labels)["nc/nc1"], base, rel_tol=1e-9)


def test_simplex_etf_is_equinorm_equiangular_and_self_dual():
    etf = simplex_etf(4, 6)
    labels = torch.arange(4).repeat(3)
    out = neural_collapse(etf[labels], labels, {"classifier": 2.5 * etf, "random": torch.randn(4, 6, dtype=torch.float64)})
    for key in ("nc/nc1", "nc/means_norm_cv", "nc/means_cos_std", "nc/means_cos_dev",
                "nc/classifier_norm_cv", "nc/classifier_cos_std", "nc/classifier_cos_dev", "nc/classifier_nc3"):
        assert abs(out[key]) < 1e-9, key
    assert out["nc/random_nc3"] > 0.1 and out["nc/random_cos_dev"] > 0.01
    assert math.isclose(out["nc/classifier_norm"], 2.5 * 2.0, rel_tol=1e-12)  # 4 unit rows: ||W||_F = 2


def test_equinorm_and_equiangularity_hand_cases():
    # norms 1 and 3: mean 2, population std 1 -> CV 0.5
    assert math.isclose(equinorm(torch.tensor([[1.0, 0.0], [0.0, 3.0]])), 0.5)
    # directions at 0, 90 and 180 degrees: cosines {0, -1, 0}; std sqrt(2/9), mean |cos + 1/2| = 1/2
    std, dev = equiangularity(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    assert math.isclose(std, math.sqrt(2 / 9), rel_tol=1e-12) and math.isclose(dev, 0.5, rel_tol=1e-12)


def test_absent_classes_and_bad_shapes():
    labels = torch.tensor([0, 0, 2, 2])  # class 1 absent: its head row is ignored
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    head = torch.tensor([[2.0, 0.0], [0.0, 9.0], [-2.0, 0.0]])
    out = neural_collapse(features, labels, {"classifier": head})
    assert abs(out["nc/classifier_nc3"]) < 1e-12 and abs(out["nc/classifier_norm_cv"]) < 1e-12
    with pytest.raises(ValueError, match="reads 3 features"):
        neural_collapse(features, labels, {"classifier": torch.randn(3, 3)})
    with pytest.raises(ValueError, match="at least 2 classes"):
        neural_collapse(features, torch.zeros(4, dtype=torch.long))


# --------------------------------------------------------------------------- gradient conflict
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(2, 2, bias=False)
        self.classifier = nn.Linear(2, 2, bias=False)


def test_gradient_cosines_orthogonal_identical_opposite():
    m = Tiny()
    parts = split_parameters(m)
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    terms = {
        "x": (m.classifier.weight * a).sum() + (m.body.weight * a).sum(),
        "y": (m.classifier.weight * b).sum() + 2.0 * (m.body.weight * a).sum(),  # head: orthogonal; body: same direction
        "z": -(m.classifier.weight * a).sum() - 3.0 * (m.body.weight * a).sum(),  # opposite to x on both
    }
    out = gradient_conflict(terms, parts)
    assert out["grad_cos/head/x_vs_y"] == 0.0
    assert math.isclose(out["grad_cos/backbone/x_vs_y"], 1.0)
    assert math.isclose(out["grad_cos/head/x_vs_z"], -1.0) and math.isclose(out["grad_cos/backbone/x_vs_z"], -1.0)
    assert math.isclose(out["grad_norm/backbone/z"], 3.0) and math.isclose(out["grad_norm/head/y"], 1.0)


def test_a_term_without_gradient_on_a_part_has_no_cosine_there():
    m = Tiny()
    terms = {"x": m.classifier.weight.sum(), "y": m.body.weight.sum() + m.classifier.weight[0, 0]}
    out = gradient_conflict(terms, split_parameters(m))
    assert "grad_cos/backbone/x_vs_y" not in out and out["grad_norm/backbone/x"] == 0.0
    assert math.isclose(out["grad_cos/head/x_vs_y"], 1 / 2)  # (1,1,1,1).(1,0,0,0) / (2 * 1)


def test_terms_on_separate_tensors_have_no_cosine_but_a_shared_tensor_does():
    m = Tiny()
    m.aux = nn.Linear(2, 2, bias=False)
    parts = {"head": [m.classifier.weight, m.aux.weight], "backbone": [m.body.weight]}
    terms = {"ce": m.classifier.weight.sum() + m.body.weight.sum(), "aux": m.aux.weight.sum() + m.body.weight.sum(),
             "other": m.classifier.weight[1, 1] * 2.0}
    out = gradient_conflict(terms, parts)
    assert "grad_cos/head/ce_vs_aux" not in out  # separate heads: undefined, not 0
    assert math.isclose(out["grad_cos/backbone/ce_vs_aux"], 1.0)
    assert math.isclose(out["grad_cos/head/ce_vs_other"], 0.5) and "grad_cos/head/aux_vs_other" not in out


def test_gradient_conflict_matches_separate_backward_passes():
    torch.manual_seed(0)
    model = build_model("mlp", 5, 3, 8)
    method = build("kd")
    x, y, t = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,)), torch.randn(6, 5)
    _, terms = method.forward_train(model, x, y, t, 0)
    out = gradient_conflict(terms, split_parameters(model))
    grads = {}
    for name in ("ce", "kd"):
        model.zero_grad()
        method.forward_train(model, x, y, t, 0)[1][name].backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for part, pick in (("head", lambda n: n.startswith("classifier.")), ("backbone", lambda n: not n.startswith("classifier."))):
        a = torch.cat([g.flatten() for n, g in grads["ce"].items() if pick(n)])
        b = torch.cat([g.flatten() for n, g in grads["kd"].items() if pick(n)])
        assert math.isclose(out[f"grad_cos/{part}/ce_vs_kd"], nn.functional.cosine_similarity(a, b, dim=0).item(), abs_tol=1e-5)


def test_head_split_of_a_dual_head_model():
    model = DualHead(build_model("mlp", 5, 3, 8), head="mlp")
    head = {n for n, _ in model.named_parameters() if is_head_parameter(n)}
    assert "backbone_model.classifier.weight" in head and "aux_head.0.weight" in head
    assert not any(n.startswith("backbone_model.") and "classifier" not in n for n in head)
    assert set(linear_heads(model, model.feature_dim)) == {"classifier"}  # the mlp head has no rows in feature space
    assert set(linear_heads(DualHead(build_model("mlp", 5, 3, 8)), model.feature_dim)) == {"classifier", "aux_head"}


# --------------------------------------------------------------------------- teacher fidelity
def test_rank_correlation_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 4, (20, 7), generator=g).double()  # many ties
    t = torch.randint(0, 4, (20, 7), generator=g).double()
    target = torch.randint(0, 7, (20,), generator=g)
    expected = []
    for i in range(20):
        keep = [j for j in range(7) if j != target[i]]
        a, b = s[i, keep].numpy(), t[i, keep].numpy()
        expected.append(0.0 if a.std() == 0 or b.std() == 0 else scipy.stats.spearmanr(a, b).statistic)
    assert math.isclose(nontarget_rank_correlation(s, t, target), sum(expected) / 20, rel_tol=1e-12)


def test_rank_correlation_ignores_the_target_and_monotone_maps():
    t = torch.randn(10, 6)
    target = t.argmax(1)
    s = t.exp() * 3
    s[torch.arange(10), target] = -100.0  # the target logit does not count
    assert math.isclose(nontarget_rank_correlation(s, t, target), 1.0, rel_tol=1e-12)
    assert math.isclose(nontarget_rank_correlation(-t, t, target), -1.0, rel_tol=1e-12)
    out = teacher_fidelity(t, t, target)
    assert out["agreement"] == 100.0 and out["kl_to_teacher"] == 0.0


# --------------------------------------------------------------------------- the fit hook
def train(ds, method_name, diagnose, settings=None):
    torch.manual_seed(0)
    method = build(method_name, settings)
    model = method.build(build_model("resnet8", ds.num_classes, 3, 8))  # batch norm buffers
    teacher = torch.randn(2, len(ds.x_train), ds.num_classes, generator=torch.Generator().manual_seed(0))
    views = lambda e, idx: teacher[e, idx]  # noqa: E731
    probe = Probe(method, ds, AugmentConfig(), 2, views, probe_size=16) if diagnose else None
    result = fit(model, method, ds, ScheduleConfig(epochs=2, batch_size=16, lr=0.05), 0, AugmentConfig(),
                 teacher_views=views, log=lambda _: None, diagnose=probe)
    return model, result


def test_probe_records_diagnostics_without_changing_training(tiny_ds):
    # an mlp aux head has dropout (global RNG) and batch norm: the probe must restore both
    plain, _ = train(tiny_ds, "dhkd", diagnose=False, settings={"aux_head": "mlp"})
    model, _ = train(tiny_ds, "dhkd", diagnose=True, settings={"aux_head": "mlp"})
    for (k, a), b in zip(plain.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_probe_records_the_diagnostics_of_a_dual_head_student(tiny_ds):
    _, result = train(tiny_ds, "dhkd", diagnose=True, settings={"aux_head": "linear", "grad_align": "none"})
    first, last = result.history
    # DHKD: CE only reaches head 1 and BinaryKLNorm only head 2: no shared head weight, no head cosine
    assert "grad_cos/head/ce_vs_aux_binarykl_norm" not in first and first["grad_norm/head/ce"] > 0.0
    assert -1.0 <= first["grad_cos/backbone/ce_vs_aux_binarykl_norm"] <= 1.0
    assert "nc/nc1" not in first and last["nc/nc1"] >= 0.0  # nc_every 0: last epoch only
    assert {"nc/classifier_nc3", "nc/aux_head_nc3"} <= last.keys()
    # its time is kept out of the history (hashed into the artifact), in the timings
    assert "diagnose_seconds" not in last and result.timings[-1]["diagnose_seconds"] >= 0.0


def test_single_term_method_has_no_conflict_and_nc_every(tiny_ds):
    method = build("ce")
    probe = Probe(method, tiny_ds, AugmentConfig(), epochs=4, nc_every=2)
    assert [probe.nc_due(e) for e in range(4)] == [False, True, False, True]
    out = probe(build_model("mlp", tiny_ds.num_classes, 3, 8), 0)
    assert not any(k.startswith("grad_") for k in out)
