"""kdlib.losses.tokens and kdlib.topk: padded batches as rows, generalized JSD, and the top-K-restricted
teacher (dense and as K + 1 buckets), against hand values, numpy fp64 loops and identities."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlib.losses.kd import kd_loss, kl_rows, reverse_kl_loss
from kdlib.losses.tokens import generalized_jsd_loss, masked_token_mean, tail_kd_loss, token_rows
from kdlib.topk import TAIL_FLOOR, restrict_to_topk, topk_restricted_log_probs
from tests.helpers.reference import rand_case, tt
from tests.helpers.tokens import (
    np_generalized_jsd,
    np_restricted_probs,
    np_tail_kd,
    padding_mask,
    token_logits,
)

TEMPS = [1.0, 2.0]


def topk_record(t: torch.Tensor, k: int, T: float = 1.0):
    """(top-k logits, indices, logsumexp(t / T)): what a top-K cache stores for teacher logits t."""
    values, indices = t.topk(k, dim=1)
    return values, indices, torch.logsumexp(t / T, dim=1)


# --------------------------------------------------------------------------- #
# token_rows, masked_token_mean
# --------------------------------------------------------------------------- #


def test_token_rows_keeps_valid_positions_in_batch_major_order():
    x = torch.arange(2 * 3 * 4, dtype=torch.float64).view(2, 3, 4)
    mask = padding_mask([2, 3], 3)
    rows = token_rows(x, mask)
    assert rows.shape == (5, 4)
    torch.testing.assert_close(rows, torch.stack([x[0, 0], x[0, 1], x[1, 0], x[1, 1], x[1, 2]]))
    assert torch.equal(token_rows(x), x.view(6, 4))  # no mask: every position, as a token model's rows
    targets = torch.tensor([[5, 6, 0], [7, 8, 9]])
    assert token_rows(targets, mask).tolist() == [5, 6, 7, 8, 9]


def test_a_mask_without_a_valid_token_is_an_error():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="mask selects no token: every position is padding"):
        token_rows(x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask selects no token"):
        masked_token_mean(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))


def test_a_mask_of_the_wrong_dtype_or_shape_is_named():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="mask must be a bool"):
        token_rows(x, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"mask shape \(3, 2\) does not match the batch's \(B, T\) = \(2, 3\)"):
        token_rows(x, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(B, T, ...\)"):
        token_rows(torch.zeros(3), None)


def test_masked_token_mean_is_the_mean_over_valid_tokens_not_over_sequences():
    values = tt([[1.0, 2.0, 99.0], [3.0, 4.0, 5.0]])
    mask = padding_mask([2, 3], 3)
    # (1 + 2 + 3 + 4 + 5) / 5 = 3, not the mean of the sequence means (1.5 + 4) / 2 = 2.75
    assert masked_token_mean(values, mask).item() == pytest.approx(3.0)
    assert masked_token_mean(values).item() == pytest.approx(114.0 / 6)


def test_nan_in_padding_reaches_neither_value_nor_gradient():
    values = tt([[1.0, float("nan")], [2.0, float("inf")]], requires_grad=True)
    out = masked_token_mean(values, padding_mask([1, 1], 2))
    out.backward()
    assert out.item() == pytest.approx(1.5)
    assert values.grad.tolist() == [[0.5, 0.0], [0.5, 0.0]]


def test_a_row_loss_on_masked_rows_equals_the_masked_mean_of_per_token_losses():
    s, t = token_logits(3, 5, 7, seed=1), token_logits(3, 5, 7, seed=2)
    mask = padding_mask([5, 2, 4], 5)
    per_token = kl_rows(F.log_softmax(t, -1).flatten(0, 1), F.log_softmax(s, -1).flatten(0, 1)).view(3, 5)
    by_rows = kd_loss(token_rows(s, mask), token_rows(t, mask), 1.0)
    torch.testing.assert_close(by_rows, masked_token_mean(per_token, mask))
    # garbage in the padded positions changes nothing
    s2, t2 = s.clone(), t.clone()
    s2[~mask], t2[~mask] = 1e4, -1e4
    torch.testing.assert_close(kd_loss(token_rows(s2, mask), token_rows(t2, mask), 1.0), by_rows)
    # an all-true mask is the unmasked loss on every row
    full = torch.ones(3, 5, dtype=torch.bool)
    torch.testing.assert_close(kd_loss(token_rows(s, full), token_rows(t, full), 1.0), kd_loss(s.flatten(0, 1), t.flatten(0, 1), 1.0))


# --------------------------------------------------------------------------- #
# generalized JSD
# --------------------------------------------------------------------------- #


def test_generalized_jsd_hand_case():
    # p_t = [0.75, 0.25], p_s = [0.5, 0.5], beta = 0.5: m = [0.625, 0.375]
    # 0.5 * (0.75 ln(0.75/0.625) + 0.25 ln(0.25/0.375)) + 0.5 * (0.5 ln(0.5/0.625) + 0.5 ln(0.5/0.375))
    # = 0.5 * (0.13674 - 0.10137) + 0.5 * (-0.11157 + 0.14384) = 0.0338226...
    s, t = tt([[0.0, 0.0]]), tt([[math.log(3.0), 0.0]])
    expected = 0.5 * (0.75 * math.log(1.2) + 0.25 * math.log(2 / 3)) + 0.5 * (0.5 * math.log(0.8) + 0.5 * math.log(4 / 3))
    assert generalized_jsd_loss(s, t, 0.5, 1.0).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.0338226, abs=1e-6)


@pytest.mark.parametrize("T", TEMPS)
def test_beta_0_is_forward_kl_and_beta_1_is_reverse_kl(T):
    s, t, _ = rand_case(seed=3)
    assert generalized_jsd_loss(tt(s), tt(t), 0.0, T).item() == pytest.approx(kd_loss(tt(s), tt(t), T).item(), rel=1e-12)
    assert generalized_jsd_loss(tt(s), tt(t), 1.0, T).item() == pytest.approx(
        reverse_kl_loss(tt(s), tt(t), T).item(), rel=1e-12
    )
    # the student is the first argument of the reverse KL: KL(p_s || p_t), not KL(p_t || p_s)
    assert generalized_jsd_loss(tt(s), tt(t), 1.0, T).item() != pytest.approx(kd_loss(tt(s), tt(t), T).item(), rel=1e-3)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("T", TEMPS)
def test_generalized_jsd_matches_numpy(beta, T):
    s, t, _ = rand_case(n=6, c=9, seed=4)
    assert generalized_jsd_loss(tt(s), tt(t), beta, T).item() == pytest.approx(np_generalized_jsd(s, t, beta, T), rel=1e-10)


@pytest.mark.parametrize("beta", [0.2, 0.5, 0.7])
def test_swapping_student_and_teacher_swaps_beta(beta):
    s, t, _ = rand_case(seed=5)
    a = generalized_jsd_loss(tt(s), tt(t), beta, 2.0).item()
    assert generalized_jsd_loss(tt(t), tt(s), 1.0 - beta, 2.0).item() == pytest.approx(a, rel=1e-12)


def test_small_beta_is_beta_times_forward_kl_and_interior_is_bounded():
    s, t, _ = rand_case(seed=6)
    forward = kd_loss(tt(s), tt(t), 1.0).item()
    assert generalized_jsd_loss(tt(s), tt(t), 1e-6, 1.0).item() == pytest.approx(1e-6 * forward, rel=1e-3)
    # JSD_beta <= h(beta) (the binary entropy): bounded where the KLs are not
    for beta in (0.1, 0.5, 0.9):
        h = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
        assert generalized_jsd_loss(tt(s) * 50, tt(t) * 50, beta, 1.0).item() <= h + 1e-12


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_generalized_jsd_shift_invariant_and_zero_at_equality(beta):
    s, t, _ = rand_case(seed=7)
    a, b = np.linspace(-5, 5, 5)[:, None], np.linspace(9, -3, 5)[:, None]
    base = generalized_jsd_loss(tt(s), tt(t), beta, 2.0).item()
    assert generalized_jsd_loss(tt(s + a), tt(t + b), beta, 2.0).item() == pytest.approx(base, rel=1e-10)
    assert generalized_jsd_loss(tt(s), tt(s + b), beta, 2.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("T", TEMPS)
def test_generalized_jsd_gradcheck_fp64(beta, T):
    s, t, _ = rand_case(n=3, c=4, seed=8, scale=1.5)
    teacher = tt(t)
    assert torch.autograd.gradcheck(lambda x: generalized_jsd_loss(x, teacher, beta, T), (tt(s, requires_grad=True),))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_generalized_jsd_finite_at_extreme_logits_in_fp32(beta):
    s = tt([[100.0, -100.0, 0.0], [-100.0, 100.0, 100.0]], dtype=torch.float32, requires_grad=True)
    t = tt([[-100.0, 100.0, 0.0], [100.0, -100.0, -100.0]], dtype=torch.float32)
    loss = generalized_jsd_loss(s, t, beta, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert loss.item() == pytest.approx(generalized_jsd_loss(s.detach().double(), t.double(), beta, 1.0).item(), rel=1e-5)


def test_generalized_jsd_teacher_is_constant_and_bad_beta_named():
    s, t, _ = rand_case(seed=9)
    teacher = tt(t, requires_grad=True)
    generalized_jsd_loss(tt(s, requires_grad=True), teacher, 0.5).backward()
    assert teacher.grad is None
    for beta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="beta must be a number in"):
            generalized_jsd_loss(tt(s), tt(t), beta)
    with pytest.raises(ValueError, match="teacher shape"):
        generalized_jsd_loss(tt(s), tt(t)[:, :3])


# --------------------------------------------------------------------------- #
# the teacher restricted to its top-K
# --------------------------------------------------------------------------- #


def test_restricted_log_probs_hand_case():
    # t = log [4, 2, 1, 1] -> p = [0.5, 0.25, 0.125, 0.125]; K = 1 keeps 0.5, the other three get 0.5 / 3
    t = tt([[math.log(4.0), math.log(2.0), 0.0, 0.0]])
    out = topk_restricted_log_probs(tt([[math.log(4.0)]]), torch.tensor([[0]]), torch.logsumexp(t, 1), 4)
    torch.testing.assert_close(out.exp(), tt([[0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3]]))
    torch.testing.assert_close(restrict_to_topk(t, 2).exp(), tt([[0.5, 0.25, 0.125, 0.125]]))


@pytest.mark.parametrize("k", [1, 3, 6, 9])
def test_restricted_log_probs_match_numpy_and_sum_to_one(k):
    _, t, _ = rand_case(n=6, c=9, seed=10)
    out = restrict_to_topk(tt(t), k)
    np.testing.assert_allclose(out.exp().numpy(), np_restricted_probs(t, k), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(6, dtype=torch.float64))
    values, indices, lse = topk_record(tt(t), k)
    assert torch.equal(topk_restricted_log_probs(values, indices, lse, 9), out)


def test_restricting_to_the_whole_vocabulary_is_log_softmax():
    _, t, _ = rand_case(seed=11)
    torch.testing.assert_close(restrict_to_topk(tt(t), 7), F.log_softmax(tt(t), 1))


def test_a_small_tail_keeps_its_log_and_one_below_the_floor_gets_the_floor():
    """The tail's log equals logsumexp(tail logits) - lse from the full logits while the tail
    mass is above TAIL_FLOOR; a tail below it (or below rounding) gets the floor, finite, not nan."""
    t = tt([[20.0, 19.0, 18.0, 0.0, 1.0, 2.0]])
    out = restrict_to_topk(t, 3)
    exact = (torch.logsumexp(t[:, 3:], 1) - torch.logsumexp(t, 1) - math.log(3)).item()
    assert out[0, 3].item() == pytest.approx(exact, rel=1e-8)
    assert exact < -16
    tiny = restrict_to_topk(tt([[50.0, 49.0, 48.0, 0.0, 1.0, 2.0]]), 3)
    torch.testing.assert_close(tiny[0, 3:], torch.full((3,), math.log(TAIL_FLOOR / 3), dtype=torch.float64))
    torch.testing.assert_close(tiny.exp().sum(1), torch.ones(1, dtype=torch.float64))


def test_restriction_is_shift_invariant_and_a_constant():
    _, t, _ = rand_case(seed=12)
    teacher = tt(t, requires_grad=True)
    out = restrict_to_topk(teacher, 3)
    assert not out.requires_grad
    torch.testing.assert_close(restrict_to_topk(tt(t) + 17.5, 3), out.detach())


def test_fp16_values_summing_past_one_give_the_floor_tail_not_nan():
    values = torch.tensor([[0.0, 0.0]], dtype=torch.float16)
    lse = torch.tensor([math.log(2.0) - 1e-3])  # the top-2 probabilities sum to 1.002
    out = topk_restricted_log_probs(values, torch.tensor([[1, 3]]), lse, 5)
    torch.testing.assert_close(out[0, [0, 2, 4]], torch.full((3,), math.log(TAIL_FLOOR / 3)))
    assert torch.isfinite(out).all()
    assert out.dtype == torch.float32


def test_topk_record_errors_name_the_argument():
    values, indices, lse = topk_record(tt(rand_case()[1]), 3)
    with pytest.raises(ValueError, match="topk_indices must be an integer"):
        topk_restricted_log_probs(values, indices.double(), lse, 7)
    with pytest.raises(ValueError, match=r"log_normalizer must have shape \(5,\)"):
        topk_restricted_log_probs(values, indices, lse[:3], 7)
    with pytest.raises(ValueError, match="1 <= K <= vocab = 2"):
        topk_restricted_log_probs(values, indices, lse, 2)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.7"):
        restrict_to_topk(tt(rand_case()[1]), 8)
    with pytest.raises(ValueError, match="student has 4"):
        tail_kd_loss(tt(rand_case()[0])[:4], values, indices, lse)


# --------------------------------------------------------------------------- #
# tail KD: KL over the K tokens and the tail bucket
# --------------------------------------------------------------------------- #


def test_tail_kd_hand_case():
    # teacher p = [0.5, 0.25, 0.125, 0.125], K = 1: buckets [0.5, 0.5]; student uniform: [0.25, 0.75]
    # KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln 2 + 0.5 ln(2/3)
    t = tt([[math.log(4.0), math.log(2.0), 0.0, 0.0]])
    loss = tail_kd_loss(tt([[0.0, 0.0, 0.0, 0.0]]), *topk_record(t, 1))
    assert loss.item() == pytest.approx(0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0), rel=1e-12)


@pytest.mark.parametrize("k", [1, 4, 8])
@pytest.mark.parametrize("T", TEMPS)
def test_tail_kd_matches_numpy(k, T):
    s, t, _ = rand_case(n=6, c=9, seed=13)
    assert tail_kd_loss(tt(s), *topk_record(tt(t), k, T), temperature=T).item() == pytest.approx(
        np_tail_kd(s, t, k, T), rel=1e-10
    )


@pytest.mark.parametrize("T", TEMPS)
def test_tail_kd_over_the_whole_vocabulary_is_kd(T):
    s, t, _ = rand_case(seed=14)
    assert tail_kd_loss(tt(s), *topk_record(tt(t), 7, T), temperature=T).item() == pytest.approx(
        kd_loss(tt(s), tt(t), T).item(), rel=1e-12
    )


@pytest.mark.parametrize("k", [1, 3])
def test_dense_restricted_kl_is_tail_kd_plus_the_tail_s_own_kl(k):
    """KL(restricted || q) = tail_kd + r * KL(uniform over the tail || q's tail renormalised)."""
    s, t, _ = rand_case(n=5, c=7, seed=15)
    values, indices, lse = topk_record(tt(t), k)
    dense = kd_loss(tt(s), topk_restricted_log_probs(values, indices, lse, 7), 1.0).item()
    extra = []
    for i in range(5):
        rest = [j for j in range(7) if j not in set(indices[i].tolist())]
        r = 1.0 - torch.exp(values[i] - lse[i]).sum().item()
        q_tail = np.exp(s[i][rest] - s[i][rest].max())
        q_tail /= q_tail.sum()
        u = 1.0 / len(rest)
        extra.append(r * np.sum(u * np.log(u / q_tail)))
    assert dense == pytest.approx(tail_kd_loss(tt(s), values, indices, lse).item() + float(np.mean(extra)), rel=1e-10)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_tail_kd_is_zero_for_the_teacher_itself_and_shift_invariant(k):
    s, t, _ = rand_case(seed=16)
    assert tail_kd_loss(tt(t), *topk_record(tt(t), k)).item() == pytest.approx(0.0, abs=1e-12)
    values, indices, lse = topk_record(tt(t), k)
    base = tail_kd_loss(tt(s), values, indices, lse).item()
    assert tail_kd_loss(tt(s) + 4.0, values - 3.0, indices, lse - 3.0).item() == pytest.approx(base, rel=1e-10)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("T", TEMPS)
def test_tail_kd_gradcheck_fp64(k, T):
    s, t, _ = rand_case(n=3, c=4, seed=17, scale=1.5)
    record = topk_record(tt(t), k, T)
    assert torch.autograd.gradcheck(lambda x: tail_kd_loss(x, *record, temperature=T), (tt(s, requires_grad=True),))


def test_tail_kd_from_an_fp16_record_and_extreme_logits_is_finite():
    t = torch.tensor([[100.0, -100.0, 0.0, 99.0], [-100.0, 100.0, -100.0, -100.0]])
    s = torch.tensor([[-100.0, 100.0, 0.0, -100.0], [100.0, -100.0, -100.0, 50.0]], requires_grad=True)
    values, indices, lse = topk_record(t, 2)
    loss = tail_kd_loss(s, values.half(), indices.short(), lse)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(s.grad).all()
