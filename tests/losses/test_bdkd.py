"""kdlib.losses.bdkd (and the reverse KL of kdlib.losses.kd it uses for the online teacher):
BD-KD against hand-computed cases, the weighted KL gradients, gradcheck and invariances.

References are written per row with Python floats, not the vectorised code under test.
"""
import math

import pytest
import torch

from kdlib.losses.bdkd import bdkd_loss, entropy_gap_weights
from kdlib.losses.kd import reverse_kl_loss


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def entropy(p):
    return -sum(v * math.log(v) for v in p)


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_entropy_gap_weights_by_hand():
    # C = 2, p_s = (1/2, 1/2), p_t = (3/4, 1/4)
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    w_f, w_r = entropy_gap_weights(s, t)
    gap = (math.log(2) - entropy([0.75, 0.25])) / math.log(2)
    assert w_r.item() == pytest.approx((1 + gap) / 2, rel=1e-6)
    assert w_f.item() == pytest.approx((1 - gap) / 2, rel=1e-6)
    # equal entropies: half and half; uniform student vs a certain teacher: all reverse
    w_f, w_r = entropy_gap_weights(torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 2.0]]))
    assert (w_f.item(), w_r.item()) == pytest.approx((0.5, 0.5))
    w_f, w_r = entropy_gap_weights(torch.zeros(1, 4), torch.tensor([[100.0, 0.0, 0.0, 0.0]]))
    assert (w_f.item(), w_r.item()) == pytest.approx((0.0, 1.0), abs=1e-6)


def test_bdkd_loss_by_hand():
    T = 2.0
    s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    t = torch.tensor([[2 * math.log(3.0), 0.0], [0.0, 0.0]])
    total = 0.0
    for s_row, t_row in zip(s.tolist(), t.tolist()):
        ps, pt = softmax([v / T for v in s_row]), softmax([v / T for v in t_row])
        gap = (entropy(softmax(s_row)) - entropy(softmax(t_row))) / math.log(2)
        total += (1 - gap) / 2 * kl(pt, ps) + (1 + gap) / 2 * kl(ps, pt)
    assert bdkd_loss(s, t, T).item() == pytest.approx(T * T * total / 2, rel=1e-6)
    # fixed weights: 0 is Hinton KD, 1 the reverse KL
    ps, pt = softmax([0.0, 0.0]), softmax([math.log(3.0), 0.0])
    one_row = (s[:1], t[:1])
    assert bdkd_loss(*one_row, T, torch.zeros(1)).item() == pytest.approx(T * T * kl(pt, ps), rel=1e-6)
    assert bdkd_loss(*one_row, T, torch.ones(1)).item() == pytest.approx(T * T * kl(ps, pt), rel=1e-6)
    assert reverse_kl_loss(*one_row, T).item() == pytest.approx(T * T * kl(ps, pt), rel=1e-6)


def test_bdkd_gradient_is_the_weighted_kl_gradients():
    g = torch.Generator().manual_seed(5)
    T = 3.0
    s = (torch.randn(4, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    (grad,) = torch.autograd.grad(bdkd_loss(s, t, T), s)
    with torch.no_grad():
        w_f, w_r = entropy_gap_weights(s, t)
        p_s, p_t = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
        kl_r = (p_s * (p_s / p_t).log()).sum(1, keepdim=True)
        forward = T * (p_s - p_t)                        # T^2 d/ds KL(p_t || p_s)
        reverse = T * p_s * ((p_s / p_t).log() - kl_r)   # T^2 d/ds KL(p_s || p_t)
        torch.testing.assert_close(grad, (w_f[:, None] * forward + w_r[:, None] * reverse) / 4)


def test_bdkd_gradcheck_with_fixed_weights():
    g = torch.Generator().manual_seed(6)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, generator=g, dtype=torch.float64)
    r = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: bdkd_loss(a, t, 2.0, r), (s,))
    assert torch.autograd.gradcheck(lambda a: reverse_kl_loss(a, t, 2.0), (s,))


def test_bdkd_zero_iff_equal_and_shift_invariant():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert bdkd_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert reverse_kl_loss(s, s.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert bdkd_loss(s, t, 4.0).item() > 1e-3
    shift = torch.randn(5, 1, generator=g) * 20
    torch.testing.assert_close(bdkd_loss(s + shift, t - shift, 4.0), bdkd_loss(s, t, 4.0), rtol=1e-4, atol=1e-6)


def test_bdkd_finite_at_logit_100():
    s = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 100.0]], requires_grad=True)
    t = torch.tensor([[-100.0, 100.0, 0.0], [100.0, -100.0, -100.0]], requires_grad=True)
    for loss in (bdkd_loss(s, t, 1.0), reverse_kl_loss(t, s, 1.0)):
        s.grad = t.grad = None
        loss.backward()
        assert torch.isfinite(loss)
        grads = [p.grad for p in (s, t) if p.grad is not None]
        assert len(grads) == 1 and torch.isfinite(grads[0]).all()  # the other side is a constant


def test_bdkd_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="reverse_weight must be a tensor of shape"):
        bdkd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 1.0, torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        bdkd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="target_logits shape"):
        reverse_kl_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
