"""Multi-teacher KD with MTARD's entropy balance (kdlib.losses.multi_teacher_kd): the balanced
temperatures and the loss against hand-computed values and closed-form gradients, never against
the code's own output; fp64 gradcheck, |logit| = 100, and bad teacher stacks."""
import math

import numpy as np
import pytest
import torch

from kdlib.losses import multi_teacher_kd
from tests.helpers.teachers import binary_teacher


def test_entropy_balance_by_hand():
    # binary entropy depends on |a| / T only, so teacher [0, 4] reaches the entropy of
    # [0, 2] at T = 1 exactly at T = 2; the softest teacher keeps the base temperature
    taus = multi_teacher_kd.entropy_balanced_temperatures(torch.stack([binary_teacher(4.0), binary_teacher(2.0)]), 1.0, 10.0)
    assert taus.tolist() == pytest.approx([2.0, 1.0], abs=1e-9)
    # base 1.5: [0, 3] matches [0, 1.5]/1.5 at T = 3
    taus = multi_teacher_kd.entropy_balanced_temperatures(torch.stack([binary_teacher(1.5), binary_teacher(3.0)]), 1.5, 10.0)
    assert taus.tolist() == pytest.approx([1.5, 3.0], abs=1e-9)
    # out of reach: [0, 40] would need T = 20; it stops at max_temperature
    taus = multi_teacher_kd.entropy_balanced_temperatures(torch.stack([binary_teacher(40.0), binary_teacher(2.0)]), 1.0, 10.0)
    assert taus.tolist() == pytest.approx([10.0, 1.0], abs=1e-9)


def test_entropy_balance_equalises_mean_entropy():
    torch.manual_seed(0)
    teachers = torch.randn(3, 16, 10, dtype=torch.float64) * torch.tensor([1.0, 3.0, 6.0]).view(3, 1, 1)
    taus = multi_teacher_kd.entropy_balanced_temperatures(teachers, 1.0, 10.0)

    def entropy(t, tau):  # numpy, independent of the code under test
        z = t.numpy() / tau
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return float(-(p * np.log(p)).sum(1).mean())

    target = max(entropy(t, 1.0) for t in teachers)
    assert [entropy(t, tau) for t, tau in zip(teachers, taus.tolist())] == pytest.approx([target] * 3, abs=1e-9)
    assert taus[0].item() == 1.0 and 1.0 < taus[1].item() < taus[2].item()


@pytest.mark.parametrize("reduction,eps", [("batchmean", 0.0), ("mean", 1e-5), ("mean", 0.0), ("batchmean", 1e-5)])
def test_multi_teacher_kd_loss_value_and_gradient_by_hand(reduction, eps):
    """("batchmean", 0): the per-row KL (kdflow's term before the settings); ("mean", 1e-5), the
    default: MTARD's, the mean over the C = 2 classes too and log(p + 1e-5) for the target's log."""
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)  # student softmax [1/2, 1/2]
    teachers = torch.stack([binary_teacher(math.log(3), 1), binary_teacher(2 * math.log(4), 1)])
    taus = torch.tensor([1.0, 2.0], dtype=torch.float64)  # targets [1/4, 3/4] and [1/5, 4/5]
    loss = multi_teacher_kd.multi_teacher_kd_loss(s, teachers, taus, reduction, eps)
    p1, p2 = np.array([0.25, 0.75]), np.array([0.2, 0.8])
    kl = lambda p: float((p * (np.log(p + eps) - np.log(0.5))).sum())  # noqa: E731
    per_class = 2 if reduction == "mean" else 1
    assert loss.item() == pytest.approx((kl(p1) + kl(p2)) / 2 / per_class, rel=1e-12)
    loss.backward()
    # d KL(p || softmax(s)) / ds = softmax(s) - p, averaged over the teachers (eps: no effect)
    assert np.allclose(s.grad.numpy(), [(0.5 - (p1 + p2) / 2) / per_class], atol=1e-12)
    if (reduction, eps) == ("mean", 1e-5):  # the default
        assert multi_teacher_kd.multi_teacher_kd_loss(s, teachers, taus).item() == loss.item()


def test_multi_teacher_kd_loss_gradcheck_and_large_logits():
    torch.manual_seed(1)
    teachers = torch.randn(2, 4, 5, dtype=torch.float64) * 3
    taus = torch.tensor([1.0, 2.5], dtype=torch.float64)
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: multi_teacher_kd.multi_teacher_kd_loss(x, teachers, taus), (s,))
    # |logit| = 100 in fp32: finite temperatures, loss and gradient
    big = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 50.0]])
    stack = torch.stack([big, -big])
    taus = multi_teacher_kd.entropy_balanced_temperatures(stack, 1.0, 10.0)
    assert torch.isfinite(taus).all() and (taus >= 1.0).all() and (taus <= 10.0).all()
    s = (big * 0.5).requires_grad_()
    loss = multi_teacher_kd.multi_teacher_kd_loss(s, stack, taus)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_bad_teacher_stacks_are_refused():
    with pytest.raises(ValueError, match=r"teachers must be a floating-point tensor of shape \(K, N, C\)"):
        multi_teacher_kd.entropy_balanced_temperatures(torch.zeros(4, 3), 1.0, 10.0)
    with pytest.raises(ValueError, match=r"max_temperature \(0.5\) must be >= temperature \(1.0\)"):
        multi_teacher_kd.entropy_balanced_temperatures(torch.zeros(2, 4, 3), 1.0, 0.5)
    with pytest.raises(ValueError, match="does not match student shape"):
        multi_teacher_kd.multi_teacher_kd_loss(torch.zeros(4, 3), torch.zeros(2, 4, 5), torch.ones(2))
    with pytest.raises(ValueError, match="reduction must be one of"):
        multi_teacher_kd.multi_teacher_kd_loss(torch.zeros(4, 3), torch.zeros(2, 4, 3), torch.ones(2), "sum")
    with pytest.raises(ValueError, match="target_log_eps must be a finite number >= 0"):
        multi_teacher_kd.multi_teacher_kd_loss(torch.zeros(4, 3), torch.zeros(2, 4, 3), torch.ones(2), "mean", -1e-5)
