"""DHKD's `grad_align` (PCGrad-style, kdlib.methods.dhkd): the projection against
hand-computed cases, and the `Method.backward` hook `fit` calls."""
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


def test_projection_is_pcgrad_over_the_shared_vector():
    # two shared tensors A (2,) and B (1,), and one (head 2) that only the term reaches
    anchor = [t(1.0, 0.0), t(1.0), None]
    grad = [t(-2.0, 1.0), t(0.5), t(3.0)]
    out = project_conflicting(anchor, grad)
    # <g, c> = -2 + 0.5 = -1.5, ||c||^2 = 2: g - (-0.75) c on the shared part
    torch.testing.assert_close(out[0], t(-1.25, 1.0))
    torch.testing.assert_close(out[1], t(1.25))
    torch.testing.assert_close(out[2], t(3.0))
    # the projected shared part is orthogonal to the anchor
    assert float(out[0] @ anchor[0] + out[1] @ anchor[1]) == pytest.approx(0.0)


def test_aligned_or_orthogonal_gradients_are_unchanged():
    anchor = [t(1.0, 2.0), None]
    for grad in ([t(3.0, 1.0), t(1.0)], [t(2.0, -1.0), t(1.0)]):  # dot 5 > 0, dot 0
        out = project_conflicting(anchor, grad)
        for a, b in zip(out, grad):
            torch.testing.assert_close(a, b)


class Toy(nn.Module):
    """A shared vector w and two one-number heads u (CE's) and v (the aux term's)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(t(0.3, -0.7))
        self.u = nn.Parameter(t(0.1))
        self.v = nn.Parameter(t(0.2))


def test_aligned_backward_on_a_hand_made_model():
    model = Toy()
    # ce = w0 + u -> grad (w: [1, 0], u: 1); aux = -2 w0 + w1 + v -> grad (w: [-2, 1], v: 1)
    terms = {"ce": model.w[0] + model.u[0], "aux": -2 * model.w[0] + model.w[1] + model.v[0]}
    aligned_backward(model, terms, anchor="ce")
    # <[-2, 1], [1, 0]> = -2 < 0: aux's w-gradient becomes [-2, 1] + 2 [1, 0] = [0, 1]
    torch.testing.assert_close(model.w.grad, t(1.0, 1.0))
    torch.testing.assert_close(model.u.grad, t(1.0))
    torch.testing.assert_close(model.v.grad, t(1.0))


def test_aligned_backward_equals_the_plain_sum_when_gradients_agree():
    model = Toy()
    terms = {"ce": (model.w**2).sum() + model.u[0] ** 2, "aux": 3 * (model.w**2).sum() + model.v[0]}
    aligned_backward(model, terms)
    aligned = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    for a, p in zip(aligned, model.parameters()):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("name", ["dhkd", "dhkd_kd"])
def test_dhkd_grad_align_removes_the_conflict_with_ce(name):
    method, model, x, y, teacher = setup(name, grad_align=True)
    model.eval()
    _, terms = method.forward_train(model, x, y, teacher, 0)
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
    torch.testing.assert_close(model.aux_head.weight.grad, plain[[id(p) for p in params].index(id(model.aux_head.weight))])


def test_grad_align_defaults_off_and_is_validated():
    assert validate_method_entry("dhkd", None).grad_align is False
    assert validate_method_entry("dhkd_kd", {"grad_align": True}).grad_align is True
    with pytest.raises(ValueError, match=r"methods\.dhkd\.grad_align"):
        validate_method_entry("dhkd", {"grad_align": "sometimes"})


def test_fit_calls_the_methods_backward():
    ds = make_synthetic(seed=0, num_train_per_class=4, num_test_per_class=2, image_size=8, num_classes=10, num_superclasses=2)
    T = torch.randn(len(ds.x_train), ds.num_classes, generator=torch.Generator().manual_seed(1)) * 3
    calls = []
    method = build("dhkd", {"grad_align": True})
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
