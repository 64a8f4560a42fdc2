"""DHKD's `grad_align` (kdlib.methods.dhkd): the `official` rule (the DHKD code's
`OptimGradAlign._project_conflicting`: whole parameter vector, head 1 included) and the
`shared` rule (the parameters both terms reach) against hand-computed cases, `none`, the
setting's validation, and the `Method.backward` hook `fit` calls."""
import numpy as np
import pytest
import torch
from torch import nn

from kdlib.config import AugmentConfig, ScheduleConfig
from kdlib.data.sources.synthetic import make_synthetic
from kdlib.methods.base import validate_method_entry
from kdlib.methods.dhkd import aligned_backward, project_conflicting
from kdlib.models import build_model
from kdlib.train import fit
from tests.helpers.methods import build, setup


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# --------------------------------------------------------------------------- #
# project_conflicting on hand-made gradient lists
# --------------------------------------------------------------------------- #
# parameters: A (2,) and B (1,) reached by both, H1 (1,) by the anchor only (head 1),
# H2 (1,) by the term only (head 2)
ANCHOR = [t(1.0, 0.0), t(1.0), t(2.0), None]
GRAD = [t(-2.0, 1.0), t(0.5), None, t(3.0)]


def test_shared_rule_projects_over_the_parameters_both_reach():
    out = project_conflicting(ANCHOR, GRAD, "shared")
    # <g, c> = -2 + 0.5 = -1.5 over A, B; ||c||^2 = 2 there: g - (-0.75) c on A, B only
    torch.testing.assert_close(out[0], t(-1.25, 1.0))
    torch.testing.assert_close(out[1], t(1.25))
    assert out[2] is None  # head 1 untouched
    torch.testing.assert_close(out[3], t(3.0))
    # the projected shared part is orthogonal to the anchor
    assert float(out[0] @ ANCHOR[0] + out[1] @ ANCHOR[1]) == pytest.approx(0.0)


def test_official_rule_projects_over_the_whole_vector_head_1_included():
    out = project_conflicting(ANCHOR, GRAD, "official")
    # zeros where the term does not reach: <g, c> = -1.5, ||c||^2 = 1 + 1 + 4 = 6, so g + 0.25 c
    torch.testing.assert_close(out[0], t(-1.75, 1.0))
    torch.testing.assert_close(out[1], t(0.75))
    torch.testing.assert_close(out[2], t(0.5))  # written into head 1, where the term had nothing
    torch.testing.assert_close(out[3], t(3.0))  # c is zero on head 2
    assert float(out[0] @ ANCHOR[0] + out[1] @ ANCHOR[1] + out[2] @ ANCHOR[2]) == pytest.approx(0.0)


@pytest.mark.parametrize("rule", ["official", "shared"])
def test_aligned_or_orthogonal_gradients_are_unchanged(rule):
    anchor = [t(1.0, 2.0), t(1.0), None]
    for grad in ([t(3.0, 1.0), None, t(1.0)], [t(2.0, -1.0), None, t(1.0)]):  # dot 5 > 0, dot 0
        out = project_conflicting(anchor, grad, rule)
        for a, b in zip(out, grad):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="official, shared"):
        project_conflicting(ANCHOR, GRAD, "pcgrad")


class Toy(nn.Module):
    """A shared vector w and two one-number heads u (CE's) and v (the aux term's)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(t(0.3, -0.7))
        self.u = nn.Parameter(t(0.1))
        self.v = nn.Parameter(t(0.2))


@pytest.mark.parametrize("rule, w, u", [
    # <[-2, 1], [1, 0]> = -2 < 0. shared: ||c||^2 over w = 1, aux's w-gradient [-2, 1] + 2 [1, 0] = [0, 1]
    ("shared", (1.0, 1.0), 1.0),
    # official: ||c||^2 over (w, u) = 2, aux's gradient (w, u, v) ([-2, 1], 0, 1) + 1 ([1, 0], 1, 0)
    ("official", (0.0, 1.0), 2.0),
])
def test_aligned_backward_on_a_hand_made_model(rule, w, u):
    model = Toy()
    # ce = w0 + u -> grad (w: [1, 0], u: 1); aux = -2 w0 + w1 + v -> grad (w: [-2, 1], v: 1)
    terms = {"ce": model.w[0] + model.u[0], "aux": -2 * model.w[0] + model.w[1] + model.v[0]}
    aligned_backward(model, terms, rule, anchor="ce")
    torch.testing.assert_close(model.w.grad, t(*w))
    torch.testing.assert_close(model.u.grad, t(u))
    torch.testing.assert_close(model.v.grad, t(1.0))


@pytest.mark.parametrize("rule", ["official", "shared"])
def test_aligned_backward_equals_the_plain_sum_when_gradients_agree(rule):
    model = Toy()
    terms = {"ce": (model.w**2).sum() + model.u[0] ** 2, "aux": 3 * (model.w**2).sum() + model.v[0]}
    aligned_backward(model, terms, rule)
    aligned = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    for a, p in zip(aligned, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_official_writes_zero_gradients_where_no_term_reaches():
    # the DHKD code's _retrieve_grad / _set_grad: every parameter gets the merged vector's slice
    for rule, expected in (("official", t(0.0)), ("shared", None)):
        model = Toy()
        model.unused = nn.Parameter(t(1.0))
        aligned_backward(model, {"ce": model.w[0] + model.u[0], "aux": -model.w[0] + model.v[0]}, rule)
        if expected is None:
            assert model.unused.grad is None
        else:
            torch.testing.assert_close(model.unused.grad, expected)


# --------------------------------------------------------------------------- #
# DHKD on a two-head toy: every parameter's gradient against numpy by hand
# --------------------------------------------------------------------------- #
class TwoHeadToy(nn.Module):
    """A linear backbone 3 -> 2 and a linear head 2 -> 3; DHKD's DualHead adds head 2."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 2)
        self.classifier = nn.Linear(2, 3)

    def forward(self, x):
        h = self.body(x)
        return self.classifier(h), h


W0 = np.array([[0.4, 0.3, 0.2], [-0.9, -0.5, 0.1]])
B0 = np.array([-0.2, 1.0])
W1 = np.array([[0.8, -0.7], [0.2, 0.4], [-0.7, -0.4]])
B1 = np.array([0.4, 0.8, -0.3])
W2 = np.array([[-0.5, 0.6], [0.2, 0.0], [-0.5, -0.9]])
B2 = np.array([-1.0, 0.2, -0.6])
X = np.array([[1.0, -0.8, -0.1], [-0.2, -0.5, 0.5]])
Y = np.array([0, 2])
TEACHER_CONFLICTING = np.array([[4.0, 1.0, -2.0], [-1.0, 0.0, -3.0]])  # <g_aux, g_ce> < 0
TEACHER_AGREEING = np.array([[-4.0, 3.0, 2.0], [0.0, -1.0, -2.0]])  # <g_aux, g_ce> > 0
T_AUX = 2.0


def hand_gradients(teacher):
    """CE's and BinaryKLNorm's gradients (weights 1, T = 2) by the chain rule, flattened in the
    model's parameter order: body.weight, body.bias, head 1 weight, bias, head 2 weight, bias."""
    n = X.shape[0]
    h = X @ W0.T + B0
    z1, z2 = h @ W1.T + B1, h @ W2.T + B2
    p = np.exp(z1 - z1.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz1 = (p - np.eye(3)[Y]) / n  # d CE / d z1
    dz2 = T_AUX / 2 * np.tanh((z2 - teacher) / (2 * T_AUX)) / n  # d T^2 mean_n sum_c log cosh((z2 - t) / 2T) / d z2
    dh1, dh2 = dz1 @ W1, dz2 @ W2
    zeros = [np.zeros(6), np.zeros(3)]
    g_ce = np.concatenate([(dh1.T @ X).ravel(), dh1.sum(0), (dz1.T @ h).ravel(), dz1.sum(0), *zeros])
    g_aux = np.concatenate([(dh2.T @ X).ravel(), dh2.sum(0), *zeros, (dz2.T @ h).ravel(), dz2.sum(0)])
    return g_ce, g_aux


def official_merge(g0, others):
    """The DHKD code's `_project_conflicting` (helper/optimizer.py:47-60) restated: copies of
    every term's flat gradient, CE's first; each one whose dot with CE's original is negative
    loses its component along it; all summed (CE's own included, never changed)."""
    pc = [g0.copy()] + [g.copy() for g in others]
    for g in pc:
        dot = g @ g0
        if dot < 0:
            g -= dot * g0 / np.linalg.norm(g0) ** 2
    return np.sum(pc, axis=0)


def shared_merge(g0, others, shared):
    """kdflow's `shared` rule: the same projection over the entries both gradients reach."""
    total = g0.copy()
    for g in others:
        g = g.copy()
        dot = g[shared] @ g0[shared]
        if dot < 0:
            g[shared] -= dot * g0[shared] / (g0[shared] @ g0[shared])
        total += g
    return total


BACKBONE = np.r_[np.ones(8, bool), np.zeros(18, bool)]  # body.weight (6) and body.bias (2)


def toy_dhkd(rule, teacher):
    method = build("dhkd", {"aux_head": "linear", "grad_align": rule})
    model = method.build(TwoHeadToy()).double()
    with torch.no_grad():
        for p, value in zip(model.parameters(), (W0, B0, W1, B1, W2, B2)):
            p.copy_(torch.from_numpy(value))
    _, terms = method.forward_train(model, torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(teacher), 0)
    method.backward(model, terms)
    return model


def flat_grads(model):
    return np.concatenate([p.grad.detach().numpy().ravel() for p in model.parameters()])


def test_hand_gradients_are_the_toys_plain_backward():
    # grad_align off: one backward of the sum, so the chain rule above is checked first
    for teacher in (TEACHER_CONFLICTING, TEACHER_AGREEING):
        g_ce, g_aux = hand_gradients(teacher)
        np.testing.assert_allclose(flat_grads(toy_dhkd("none", teacher)), g_ce + g_aux, rtol=1e-12, atol=1e-15)


def test_official_rule_on_the_two_head_toy():
    g_ce, g_aux = hand_gradients(TEACHER_CONFLICTING)
    assert g_aux @ g_ce < 0, "the case must conflict"
    model = toy_dhkd("official", TEACHER_CONFLICTING)
    got = flat_grads(model)
    expected = official_merge(g_ce, [g_aux])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    # by hand, per parameter: the aux term gains -(<g_aux, g_ce> / ||g_ce||^2) g_ce everywhere
    scale = (g_aux @ g_ce) / (g_ce @ g_ce)
    head1, head2 = slice(8, 17), slice(17, 26)
    np.testing.assert_allclose(got[:8], g_ce[:8] + g_aux[:8] - scale * g_ce[:8], rtol=1e-12)
    np.testing.assert_allclose(got[head1], (1 - scale) * g_ce[head1], rtol=1e-12)  # head 1 included
    np.testing.assert_allclose(got[head2], g_aux[head2], rtol=1e-12)  # CE's gradient is zero on head 2
    assert (got - g_ce) @ g_ce == pytest.approx(0.0, abs=1e-15)  # what the aux term adds is orthogonal to CE
    # and it is not the shared rule
    assert not np.allclose(got, shared_merge(g_ce, [g_aux], BACKBONE), rtol=1e-6)


def test_shared_rule_on_the_two_head_toy_keeps_head_1_for_ce():
    g_ce, g_aux = hand_gradients(TEACHER_CONFLICTING)
    got = flat_grads(toy_dhkd("shared", TEACHER_CONFLICTING))
    np.testing.assert_allclose(got, shared_merge(g_ce, [g_aux], BACKBONE), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got[8:17], g_ce[8:17], rtol=1e-12)  # head 1: CE's gradient alone
    assert (got[:8] - g_ce[:8]) @ g_ce[:8] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("rule", ["official", "shared"])
def test_agreeing_terms_on_the_two_head_toy_are_summed_unchanged(rule):
    g_ce, g_aux = hand_gradients(TEACHER_AGREEING)
    assert g_aux @ g_ce > 0
    np.testing.assert_allclose(flat_grads(toy_dhkd(rule, TEACHER_AGREEING)), g_ce + g_aux, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- #
# the methods as a study builds them
# --------------------------------------------------------------------------- #
def term_grads(terms, params, name):
    grads = torch.autograd.grad(terms[name], params, retain_graph=True, allow_unused=True)
    return np.concatenate([(torch.zeros_like(p) if g is None else g).detach().double().numpy().ravel()
                           for p, g in zip(params, grads)])


@pytest.mark.parametrize("name", ["dhkd", "dhkd_kd"])
def test_official_rule_projects_each_term_against_ce_alone(name):
    # dhkd_kd: KD and BinaryKLNorm each projected against CE (never against each other), then summed
    method, model, x, y, teacher = setup(name)
    assert method.settings.grad_align == "official"
    model.eval()
    # a teacher 5 below: BinaryKLNorm is not shift-invariant, so it conflicts with CE (and KD does)
    _, terms = method.forward_train(model, x, y, teacher - 5.0, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    g_ce = term_grads(terms, params, "ce")
    others = [term_grads(terms, params, k) for k in terms if k != "ce"]
    assert min(g @ g_ce for g in others) < 0, "the test case must have a term that conflicts with CE"
    method.backward(model, terms)
    got = np.concatenate([p.grad.detach().double().numpy().ravel() for p in params])
    np.testing.assert_allclose(got, official_merge(g_ce, others), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["dhkd", "dhkd_kd"])
def test_shared_rule_removes_the_conflict_on_the_shared_parameters(name):
    method, model, x, y, teacher = setup(name, grad_align="shared")
    model.eval()
    _, terms = method.forward_train(model, x, y, teacher - 5.0, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    ce_grad = torch.autograd.grad(terms["ce"], params, retain_graph=True, allow_unused=True)
    plain = torch.autograd.grad(sum(terms.values()), params, retain_graph=True, allow_unused=True)
    method.backward(model, terms)
    shared = [i for i, p in enumerate(params) if ce_grad[i] is not None and p.grad is not None]
    dots = []
    for name_other in (k for k in terms if k != "ce"):
        other = torch.autograd.grad(terms[name_other], params, retain_graph=True, allow_unused=True)
        dots.append(sum((other[i] * ce_grad[i]).sum() for i in shared if other[i] is not None))
    assert min(dots) < 0, "the test case must have a term that conflicts with CE"
    # what the distillation terms add on top of CE no longer opposes CE on the shared parameters
    added = sum(((params[i].grad - ce_grad[i]) * ce_grad[i]).sum() for i in shared)
    assert added >= -1e-6 * max(1.0, sum(ce_grad[i].pow(2).sum() for i in shared))
    assert any(not torch.allclose(params[i].grad, plain[i]) for i in shared)
    # head 2 is reached by BinaryKLNorm only and keeps its plain gradient
    index = {id(p): i for i, p in enumerate(params)}
    for p in model.aux_head.parameters():
        torch.testing.assert_close(p.grad, plain[index[id(p)]])


def test_off_is_one_backward_of_the_sum():
    method, model, x, y, teacher = setup("dhkd", grad_align="none")
    assert not method.shapes_gradients
    model.eval()
    _, terms = method.forward_train(model, x, y, teacher, 0)
    params = list(model.parameters())
    plain = torch.autograd.grad(sum(terms.values()), params, retain_graph=True)
    method.backward(model, terms)
    for p, g in zip(params, plain):
        torch.testing.assert_close(p.grad, g)


def test_grad_align_defaults_official_and_refuses_booleans():
    assert validate_method_entry("dhkd", None).grad_align == "official"
    assert validate_method_entry("dhkd_kd", None).grad_align == "official"
    assert validate_method_entry("dhkd_kd", {"grad_align": "shared"}).grad_align == "shared"
    for old in (True, False, "true", "false"):
        with pytest.raises(ValueError, match=r"methods\.dhkd\.grad_align: .*official \| shared \| none.*no longer a boolean"):
            validate_method_entry("dhkd", {"grad_align": old})
    with pytest.raises(ValueError, match=r"methods\.dhkd_kd\.grad_align: .*official \| shared \| none, got 'sometimes'"):
        validate_method_entry("dhkd_kd", {"grad_align": "sometimes"})


def test_fit_calls_the_methods_backward():
    ds = make_synthetic(seed=0, num_train_per_class=4, num_test_per_class=2, image_size=8, num_classes=10, num_superclasses=2)
    T = torch.randn(len(ds.x_train), ds.num_classes, generator=torch.Generator().manual_seed(1)) * 3
    calls = []
    method = build("dhkd")
    assert method.shapes_gradients
    original = method.backward
    method.backward = lambda model, terms: (calls.append(sorted(terms)), original(model, terms))
    torch.manual_seed(0)
    model = method.build(build_model("mlp", ds.num_classes, ds.num_channels, ds.image_size))
    result = fit(
        model, method, ds, ScheduleConfig(epochs=1, batch_size=16, lr=0.05), 0,
        AugmentConfig(padding=1, flip=True, seed=0), teacher_views=lambda e, idx: T[idx], log=lambda _: None,
    )
    assert calls and all(c == ["aux_binarykl_norm", "ce"] for c in calls)
    assert len(calls) == len(ds.x_train) // 16
    assert all(torch.isfinite(torch.tensor(v)) for v in result.history[0].values())
